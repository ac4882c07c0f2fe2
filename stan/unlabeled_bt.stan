// Unlabeled comparison-level K-mixture Bradley-Terry model.
//
// Every judgement comes from an anonymous annotator of a latent subgroup k with probability
// pi_k, so the latent group is marginalised judgement by judgement:
//   P(outcome | cell) = sum_k pi_k P_k(outcome | cell),
//   eta_k = (a - b)' theta_k + gamma * order,
// with P_k the Davidson (1970) probabilities of aggregate_bt.stan (inv_logit(eta_k) without
// ties). Identical judgements are exchangeable, so the data are the pooled counts per cell =
// distinct (attribute difference, presentation order) and the likelihood is multinomial in the
// mixture probabilities.
//
// The model is not identified from aggregate data (Proposition 1 of the position paper): the
// likelihood depends on (pi, theta) only through the per-cell mixture probabilities, and in the
// linear limit of the link only through theta_bar = sum_k pi_k theta_k, so "everybody
// indifferent" and "two opposed halves" fit alike. The curvature of the logistic link carries
// weak information about the components that grows with the judgements per cell, so expect
// wide posteriors for theta_k and pi with several modes and chains that disagree, while the
// label-invariant summaries theta_bar and p_agg contract. Labels are exchangeable: the
// posterior is invariant under the K! permutations of the components.
//
// identify = 1 imposes the identifying constraint theta[1, j] < ... < theta[K, j] for the
// attribute j = ident_attr (an `ordered` parameter). It removes the permutation symmetry only;
// it does not identify the mixture, and it distorts the posterior where the components overlap
// in attribute j (Stan User's Guide, "Problematic posteriors").
// theta is sampled in the design's whitened basis when the data say so (whiten = 1; the QR
// reparameterisation, design.stanfunctions; Python never combines it with identify = 1).
functions {
  #include functions/design.stanfunctions
  #include functions/davidson.stanfunctions
  #include functions/cell_outputs.stanfunctions
  // log(pi_k) + log P_k(outcome | cell) for every component k: array of C x (2 + has_ties).
  array[] matrix component_log_probs(matrix eta, vector log_pi, int has_ties,
                                     array[] real log_nu) {
    int C = rows(eta);
    int K = cols(eta);
    array[K] matrix[C, 2 + has_ties] lp;
    for (k in 1:K) {
      lp[k] = outcome_log_probs(col(eta, k), log_nu) + log_pi[k];
    }
    return lp;
  }
  // Element-wise log_sum_exp over components: log P(outcome | cell) of the mixture.
  matrix log_sum_exp_components(array[] matrix lp) {
    int K = size(lp);
    matrix[rows(lp[1]), cols(lp[1])] m = lp[1];
    for (k in 2:K) {
      m = fmax(m, lp[k]);
    }
    matrix[rows(lp[1]), cols(lp[1])] s = exp(lp[1] - m);
    for (k in 2:K) {
      s += exp(lp[k] - m);
    }
    return m + log(s);
  }
}
data {
  int<lower=1> C;                        // number of cells
  int<lower=1> P;                        // number of attributes (columns of the design)
  int<lower=1> K;                        // number of latent subgroups (assumed)
  // the design (attribute difference a - b per cell), dense or in compressed row storage
  #include functions/design_data.stan
  #include functions/whitening_data.stan
  vector<lower=-1, upper=1>[C] order;    // presentation order (+1 a first, -1 b first, 0 unknown)
  int<lower=0, upper=1> has_ties;        // 1: Davidson ties; 0: binomial (no ties in the data)
  int<lower=0, upper=1> has_order;       // 1: estimate a position effect gamma
  array[C, 2 + has_ties] int<lower=0> y; // pooled counts per cell: b preferred, a preferred[, tie]
  int<lower=0, upper=1> identify;        // 1: order the components by theta[, ident_attr]
  int<lower=1, upper=P> ident_attr;      // the attribute that orders the components
  // priors (passed as data)
  vector<lower=0>[K] prior_pi_alpha;     // pi ~ dirichlet(prior_pi_alpha) (concentration * pi_0)
  vector[P] prior_theta_mean;            // theta_k ~ normal(prior_theta_mean, prior_theta_sd)
  vector<lower=0>[P] prior_theta_sd;
  real<lower=0> prior_order_sd;          // gamma ~ normal(0, prior_order_sd)
  real prior_log_nu_mean;                // log(nu) ~ normal(prior_log_nu_mean, prior_log_nu_sd)
  real<lower=0> prior_log_nu_sd;
  int<lower=0, upper=1> prior_only;      // 1: ignore the likelihood (prior predictive runs)
}
transformed data {
  matrix[C, 2 + has_ties] counts = to_matrix(y);
  int whitened = whiten && !prior_only;  // sample theta's coordinates (design.stanfunctions)
  // prior mean and sd of vec(theta) (column-major K x P), the same for every component
  vector[K * P] theta_loc = to_vector(rep_matrix(prior_theta_mean', K));
  vector[K * P] theta_scale = to_vector(rep_matrix(prior_theta_sd', K));
}
parameters {
  simplex[K] pi;                                  // subgroup shares
  ordered[identify ? K : 0] theta_lead_ordered;  // theta[, ident_attr] when identify = 1
  vector[identify ? 0 : K] theta_lead_free;       // its coordinate when identify = 0
  matrix[K, P - 1] theta_rest;                    // the other coordinates
  array[has_order] real gamma;                    // position (shown-first) effect
  array[has_ties] real log_nu;                    // log Davidson tie parameter
}
transformed parameters {
  // preference weights of each latent subgroup (row k)
  matrix[K, P] theta = rows_from_coordinates(
      component_coordinates(theta_lead_ordered, theta_lead_free, theta_rest, ident_attr),
      theta_basis, whitened);
}
model {
  // utility difference a - b per cell and component
  matrix[C, K] eta = linear_predictors(X, X_w, X_v, X_u, theta, gamma, order);
  to_vector(theta) ~ normal(theta_loc, theta_scale);
  pi ~ dirichlet(prior_pi_alpha);
  gamma ~ normal(0, prior_order_sd);
  log_nu ~ normal(prior_log_nu_mean, prior_log_nu_sd);
  if (!prior_only) {
    target += sum(counts .* log_sum_exp_components(
                               component_log_probs(eta, log(pi), has_ties, log_nu)));
  }
}
generated quantities {
  // population-average preference sum_k pi_k theta_k (label-invariant)
  vector[P] theta_bar = (pi' * theta)';
  // log prior density, for power-scaling sensitivity
  real lprior = normal_lpdf(to_vector(theta) | theta_loc, theta_scale)
                + dirichlet_lpdf(pi | prior_pi_alpha)
                + normal_lpdf(gamma | 0, prior_order_sd)
                + normal_lpdf(log_nu | prior_log_nu_mean, prior_log_nu_sd);
  // mixture log probability of each outcome in each cell (expanded to one log likelihood value
  // per judgement in Python)
  matrix[C, 2 + has_ties] log_p_cell;
  vector[C] p_agg;                       // aggregate P(a preferred) per cell (label-invariant)
  // allocation probabilities P(group k | cell, outcome): a judgement's posterior group
  // membership given the parameters, for relabelling (Stephens 2000)
  array[C, 2 + has_ties] vector[K] alloc;
  array[C, 2 + has_ties] int y_rep;      // replicated counts per cell and outcome
  {
    matrix[C, K] eta = linear_predictors(X, X_w, X_v, X_u, theta, gamma, order);
    array[K] matrix[C, 2 + has_ties] lp = component_log_probs(eta, log(pi), has_ties, log_nu);
    log_p_cell = log_sum_exp_components(lp);
    for (c in 1:C) {
      for (o in 1:(2 + has_ties)) {
        for (k in 1:K) {
          alloc[c, o, k] = exp(lp[k][c, o] - log_p_cell[c, o]);
        }
      }
    }
  }
  p_agg = exp(log_p_cell[:, 2]);
  y_rep = cell_replicates_rng(log_p_cell, y);
}
