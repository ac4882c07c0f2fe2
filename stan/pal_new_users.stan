// Few-shot localisation of unseen users in a fitted PAL ideal-point model (companion of
// pal_ideal_point.stan; PAL section 3.3.1: "keep the prototypes and mapping fixed and learn only
// the new user's weights").
//
// The shared parameters (metric M = W'W, prototype utilities theta, position effect; see
// pal_ideal_point.stan for the parameterisation) are not re-estimated: they enter as
// S draws theta_1..theta_S from the posterior given the seen users' data. New user j has weights
// w_j ~ dirichlet(prior_w_alpha) and its judgements y_j are independent of the other users given
// theta, so
//   p(w_j | y_j, y_seen) = sum_s p(theta_s | y_j, y_seen) p(w_j | y_j, theta_s)
//                        propto p(w_j) * (1 / S) sum_s p(y_j | w_j, theta_s),
// i.e. each user's posterior mixes over the draws, reweighting them by that user's own
// judgements only (marginalised with log_sum_exp; no other new user informs theta). The draw that
// goes with each posterior draw of w_j is sampled in generated quantities from its conditional,
// categorical_logit(log p(y_j | w_j, theta_s)), and reported as `seen_draw` (1-based) so predictions
// can be made with the matching shared parameters.
functions {
  // An array of J vectors of size K as a J x K matrix.
  matrix stack_rows(array[] vector v) {
    matrix[size(v), rows(v[1])] m;
    for (j in 1:size(v)) {
      m[j] = v[j]';
    }
    return m;
  }
  // Log probability of every cell's counts: n_a log p + (n_ab - n_a) log (1 - p), p = inv_logit(eta).
  vector cell_log_lik(vector eta, vector n_a, vector n_b) {
    return n_a .* log_inv_logit(eta) + n_b .* log_inv_logit(-eta);
  }
}
data {
  int<lower=1> J;                        // new users
  int<lower=1> K;                        // prototypes
  int<lower=1> D;                        // attributes of an option
  int<lower=1> S;                        // posterior draws of the shared parameters
  array[S] matrix[D, D] L_M;             // Cholesky factor of the metric per draw
  array[S] matrix[K, D] theta;           // prototype utilities per draw
  vector[S] gamma;                       // position effect per draw (0 when not modelled)
  int<lower=1> C;                        // distinct cells (option a, option b, order, user)
  matrix[C, D] X_a;
  matrix[C, D] X_b;
  array[C] int<lower=1, upper=J> user;
  vector<lower=-1, upper=1>[C] order;
  array[C, 2] int<lower=0> y;            // counts per cell: b preferred, a preferred
  vector<lower=0>[K] prior_w_alpha;      // w_j ~ dirichlet(prior_w_alpha), as for seen users
  int<lower=0, upper=1> prior_only;
}
transformed data {
  // The log-odds are linear in w_j for a fixed draw: eta = G_s[c] * w_user[c] + base_s[c] with
  // G_s = X_diff theta_s' and base_s = -(a - b)' M_s (a + b) + gamma_s order.
  array[S] matrix[C, K] G;
  array[S] vector[C] base;
  for (s in 1:S) {
    G[s] = (X_a - X_b) * theta[s]';
    base[s] = -rows_dot_product((X_a - X_b) * L_M[s], (X_a + X_b) * L_M[s]) + gamma[s] * order;
  }
  vector[C] n_a = to_vector(y[:, 2]);
  vector[C] n_b = to_vector(y[:, 1]);
  // sparse user-by-cell incidence, to sum cell log likelihoods per user
  matrix[J, C] incidence = rep_matrix(0, J, C);
  for (c in 1:C) {
    incidence[user[c], c] = 1;
  }
  vector[C] inc_w = csr_extract_w(incidence);
  array[C] int inc_v = csr_extract_v(incidence);
  array[J + 1] int inc_u = csr_extract_u(incidence);
}
parameters {
  array[J] simplex[K] w;                 // each new user's weights on the prototypes
}
model {
  w ~ dirichlet(prior_w_alpha);
  if (!prior_only) {
    matrix[C, K] w_cell = stack_rows(w)[user];  // the weights of each cell's user
    matrix[S, J] lp;                     // log p(y_j | w_j, theta_s)
    for (s in 1:S) {
      vector[C] eta = rows_dot_product(G[s], w_cell) + base[s];
      lp[s] = csr_matrix_times_vector(J, C, inc_w, inc_v, inc_u,
                                      cell_log_lik(eta, n_a, n_b))';
    }
    for (j in 1:J) {
      target += log_sum_exp(lp[:, j]);
    }
  }
}
generated quantities {
  real lprior = dirichlet_lpdf(w | prior_w_alpha);
  array[J] int<lower=1, upper=S> seen_draw;  // the shared-parameter draw paired with w
  vector[J] log_lik;                     // log p(y_j | w_j, theta_draw) per user
  array[C, 2] int y_rep;
  {
    matrix[C, K] w_cell = stack_rows(w)[user];
    matrix[S, J] lp;
    array[S] vector[C] eta;
    for (s in 1:S) {
      eta[s] = rows_dot_product(G[s], w_cell) + base[s];
      lp[s] = csr_matrix_times_vector(J, C, inc_w, inc_v, inc_u,
                                      cell_log_lik(eta[s], n_a, n_b))';
    }
    for (j in 1:J) {
      seen_draw[j] = prior_only ? categorical_rng(rep_vector(1.0 / S, S))
                           : categorical_logit_rng(lp[:, j]);
      log_lik[j] = lp[seen_draw[j], j];
    }
    for (c in 1:C) {
      y_rep[c, 2] = binomial_rng(y[c, 1] + y[c, 2], inv_logit(eta[seen_draw[user[c]], c]));
      y_rep[c, 1] = y[c, 1] + y[c, 2] - y_rep[c, 2];
    }
  }
}
