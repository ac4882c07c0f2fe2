// Naive per-row labeled K-group Bradley-Terry: the sufficient-statistics baseline for
// stan/labeled_bt.stan with pooling = "none" and no ties or order effect.
//
// Judgement n, made by an annotator of observed subgroup g[n], prefers a with probability
// inv_logit(a' theta_g - b' theta_g); theta_k ~ normal(prior_theta_mean, prior_theta_sd)
// independently; the subgroup shares pi ~ dirichlet(prior_pi_alpha) with the labels of the
// distinct annotators n_annotators ~ multinomial(pi), exactly as in labeled_bt.stan.
// The likelihood is written the way bpcs writes Bradley-Terry (see naive_bt.stan): one
// Bernoulli term per judgement in a loop over rows, and a per-row log likelihood.
data {
  int<lower=1> N;                        // judgements (rows)
  int<lower=1> P;                        // attributes
  int<lower=1> K;                        // subgroups
  matrix[N, P] A;                        // attributes of option a in each judgement
  matrix[N, P] B;                        // attributes of option b in each judgement
  array[N] int<lower=1, upper=K> g;      // subgroup of the annotator of each judgement
  array[N] int<lower=0, upper=1> y;      // 1: a preferred, 0: b preferred
  array[K] int<lower=0> n_annotators;    // distinct annotators carrying each label
  // priors (passed as data)
  vector[P] prior_theta_mean;
  vector<lower=0>[P] prior_theta_sd;
  vector<lower=0>[K] prior_pi_alpha;
  int<lower=0, upper=1> prior_only;      // 1: ignore the likelihood
}
parameters {
  array[K] vector[P] theta;              // preference weights of each subgroup
  simplex[K] pi;                         // subgroup shares
}
model {
  for (k in 1:K) {
    theta[k] ~ normal(prior_theta_mean, prior_theta_sd);
  }
  pi ~ dirichlet(prior_pi_alpha);
  if (!prior_only) {
    n_annotators ~ multinomial(pi);
    for (n in 1:N) {
      real utility_a = dot_product(A[n], theta[g[n]]);
      real utility_b = dot_product(B[n], theta[g[n]]);
      y[n] ~ bernoulli_logit(utility_a - utility_b);
    }
  }
}
generated quantities {
  real lprior = dirichlet_lpdf(pi | prior_pi_alpha);
  vector[N] log_lik;                     // one value per judgement, as bpcs stores it
  array[N] int y_rep;                    // replicated judgements
  for (k in 1:K) {
    lprior += normal_lpdf(theta[k] | prior_theta_mean, prior_theta_sd);
  }
  for (n in 1:N) {
    real eta = dot_product(A[n], theta[g[n]]) - dot_product(B[n], theta[g[n]]);
    log_lik[n] = bernoulli_logit_lpmf(y[n] | eta);
    y_rep[n] = bernoulli_logit_rng(eta);
  }
}
