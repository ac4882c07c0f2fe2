// Naive per-row Bradley-Terry: the benchmark baseline for sufficient statistics.
//
// The same model as stan/aggregate_bt.stan without ties or order effect,
//   P(a > b) = inv_logit(a' theta - b' theta),   theta ~ normal(prior_theta_mean, prior_theta_sd),
// written the way bpcs (Issa Mattos & Martins Silva Ramos, btgeneralized.stan) writes a
// Bradley-Terry model with predictors: one Bernoulli term per judgement, each option's
// utility computed in a loop over rows, and a per-row log likelihood in generated quantities.
// It differs from bpcs in one place, in the baseline's favour: bpcs evaluates
// exp(l_a) / (exp(l_a) + exp(l_b)) and calls bernoulli(); this program calls bernoulli_logit(),
// which is cheaper and cannot overflow. Nothing here collapses repeated judgements, so every
// one of the N rows is a separate autodiff term.
data {
  int<lower=1> N;                        // judgements (rows)
  int<lower=1> P;                        // attributes
  matrix[N, P] A;                        // attributes of option a in each judgement
  matrix[N, P] B;                        // attributes of option b in each judgement
  array[N] int<lower=0, upper=1> y;      // 1: a preferred, 0: b preferred
  // priors (passed as data)
  vector[P] prior_theta_mean;
  vector<lower=0>[P] prior_theta_sd;
  int<lower=0, upper=1> prior_only;      // 1: ignore the likelihood
}
parameters {
  vector[P] theta;                       // preference weights on the attributes
}
model {
  theta ~ normal(prior_theta_mean, prior_theta_sd);
  if (!prior_only) {
    for (n in 1:N) {
      real utility_a = dot_product(A[n], theta);
      real utility_b = dot_product(B[n], theta);
      y[n] ~ bernoulli_logit(utility_a - utility_b);
    }
  }
}
generated quantities {
  real lprior = normal_lpdf(theta | prior_theta_mean, prior_theta_sd);
  vector[N] log_lik;                     // one value per judgement, as bpcs stores it
  array[N] int y_rep;                    // replicated judgements
  for (n in 1:N) {
    real eta = dot_product(A[n], theta) - dot_product(B[n], theta);
    log_lik[n] = bernoulli_logit_lpmf(y[n] | eta);
    y_rep[n] = bernoulli_logit_rng(eta);
  }
}
