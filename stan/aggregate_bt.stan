// Aggregate Bradley-Terry model: one preference vector for the whole population.
//
// The data arrive as sufficient statistics: each "cell" is a distinct combination of
// (attribute difference a - b, presentation order), with the number of judgements that
// preferred a, preferred b, or tied. Without ties this is binomial; with ties it is the
// Davidson (1970) model,
//   P(a > b) = exp(eta / 2) / D,  P(b > a) = exp(-eta / 2) / D,  P(tie) = nu / D,
//   D = exp(eta / 2) + exp(-eta / 2) + nu,
// which reduces to P(a > b) = inv_logit(eta) when nu = 0. The linear predictor is
//   eta = (a - b)' theta + gamma * order,
// with order = +1 when a was shown first, -1 when b was, and 0 when unknown.
// theta is sampled in the design's whitened basis when the data say so (whiten = 1; the QR
// reparameterisation, design.stanfunctions): the same posterior, without the correlations the
// design puts between attributes.
// Priors are data, so prior sensitivity and prior-only runs need no recompile.
functions {
  #include functions/design.stanfunctions
  #include functions/davidson.stanfunctions
  #include functions/cell_outputs.stanfunctions
}
data {
  int<lower=1> C;                        // number of cells
  int<lower=1> P;                        // number of attributes (columns of the design)
  // the design (attribute difference a - b per cell), dense or in compressed row storage
  #include functions/design_data.stan
  #include functions/whitening_data.stan
  vector<lower=-1, upper=1>[C] order;    // presentation order (+1 a first, -1 b first, 0 unknown)
  int<lower=0, upper=1> has_ties;        // 1: Davidson ties; 0: binomial (no ties in the data)
  int<lower=0, upper=1> has_order;       // 1: estimate a position effect gamma
  array[C, 2 + has_ties] int<lower=0> y; // counts per cell: b preferred, a preferred[, tie]
  #include functions/cell_outputs_data.stan
  // priors (passed as data)
  vector[P] prior_theta_mean;
  vector<lower=0>[P] prior_theta_sd;
  real<lower=0> prior_order_sd;          // gamma ~ normal(0, prior_order_sd)
  real prior_log_nu_mean;                // log(nu) ~ normal(prior_log_nu_mean, prior_log_nu_sd)
  real<lower=0> prior_log_nu_sd;
  int<lower=0, upper=1> prior_only;      // 1: ignore the likelihood (prior predictive runs)
}
transformed data {
  vector[C] n_a = to_vector(y[ : , 2]);         // trials decided for a
  vector[C] n_ab = n_a + to_vector(y[ : , 1]);  // trials decided for a or b
  matrix[C, 2 + has_ties] counts = to_matrix(y);
  int whitened = whiten && !prior_only;  // sample theta's coordinates (design.stanfunctions)
}
parameters {
  vector[P] theta_coord;                 // theta's coordinates (theta itself when not whitened)
  array[has_order] real gamma;           // position (shown-first) effect
  array[has_ties] real log_nu;           // log Davidson tie parameter
}
transformed parameters {
  vector[P] theta = from_coordinates(theta_coord, theta_basis, whitened);  // preference weights
}
model {
  // utility difference a - b per cell
  vector[C] eta = linear_predictor(X, X_w, X_v, X_u, theta, gamma, order);
  theta ~ normal(prior_theta_mean, prior_theta_sd);
  gamma ~ normal(0, prior_order_sd);
  log_nu ~ normal(prior_log_nu_mean, prior_log_nu_sd);
  if (!prior_only) {
    if (has_ties) {
      target += sum(counts .* davidson_log_probs(eta, log_nu[1]));
    } else {
      target += binomial_logit_sum(n_a, n_ab, eta);
    }
  }
}
generated quantities {
  // log prior density, for power-scaling sensitivity
  real lprior = normal_lpdf(theta | prior_theta_mean, prior_theta_sd)
                + normal_lpdf(gamma | 0, prior_order_sd)
                + normal_lpdf(log_nu | prior_log_nu_mean, prior_log_nu_sd);
  // the optional outputs (cell_outputs_data.stan): log probability of each outcome in each cell,
  // log likelihood of each unit, replicated counts per cell and outcome
  matrix[save_log_p_cell ? C : 0, 2 + has_ties] log_p_cell;
  vector[save_log_lik ? U : 0] log_lik;
  array[replicate ? C : 0, 2 + has_ties] int y_rep;
  if (save_log_p_cell || save_log_lik || replicate) {
    matrix[C, 2 + has_ties] log_p = outcome_log_probs(
      linear_predictor(X, X_w, X_v, X_u, theta, gamma, order), log_nu);
    if (save_log_p_cell) {
      log_p_cell = log_p;
    }
    if (save_log_lik) {
      log_lik = unit_log_lik(log_p, unit_w, unit_v, unit_u);
    }
    if (replicate) {
      y_rep = cell_replicates_rng(log_p, y);
    }
  }
}
