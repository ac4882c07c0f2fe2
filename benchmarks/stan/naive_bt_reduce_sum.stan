// benchmarks/stan/naive_bt.stan with its likelihood split by reduce_sum (within-chain threads).
//
// The arithmetic is the naive program's, row for row: only the sum over judgements is handed to
// reduce_sum, which evaluates slices of rows in parallel TBB tasks when the program is built with
// STAN_THREADS and a thread pool larger than one exists; otherwise it runs the slices in turn.
// The benchmark (target 6) compares its time per gradient and CPU use with naive_bt.stan's.
functions {
  // Log likelihood of the judgements start..end (y_slice holds their outcomes).
  real partial_log_lik(array[] int y_slice, int start, int end, matrix A, matrix B,
                       vector theta) {
    real lp = 0;
    for (i in 1:size(y_slice)) {
      int n = start + i - 1;
      lp += bernoulli_logit_lpmf(y_slice[i] | dot_product(A[n], theta)
                                              - dot_product(B[n], theta));
    }
    return lp;
  }
}
data {
  int<lower=1> N;                        // judgements (rows)
  int<lower=1> P;                        // attributes
  matrix[N, P] A;                        // attributes of option a in each judgement
  matrix[N, P] B;                        // attributes of option b in each judgement
  array[N] int<lower=0, upper=1> y;      // 1: a preferred, 0: b preferred
  int<lower=1> grainsize;                // rows per reduce_sum task (1: let TBB choose)
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
    target += reduce_sum(partial_log_lik, y, grainsize, A, B, theta);
  }
}
generated quantities {
  real lprior = normal_lpdf(theta | prior_theta_mean, prior_theta_sd);
  vector[N] log_lik;                     // one value per judgement
  array[N] int y_rep;                    // replicated judgements
  for (n in 1:N) {
    real eta = dot_product(A[n], theta) - dot_product(B[n], theta);
    log_lik[n] = bernoulli_logit_lpmf(y[n] | eta);
    y_rep[n] = bernoulli_logit_rng(eta);
  }
}
