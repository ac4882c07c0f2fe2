// Annotator-level latent-type Bradley-Terry mixture (the "paired-annotator" model).
//
// Annotator i belongs to one latent type z_i in 1..K, P(z_i = k) = pi_k, and makes every one of
// their judgements with that type's preference vector theta_k. Marginalising z_i,
//   p(y_i | theta, pi) = sum_k pi_k prod_j p(y_ij | theta_k),
// so an annotator's judgements enter the mixture as one block. Repeated judgements from the same
// person say which type the person belongs to, which pooled one-judgement-per-person data cannot
// (the paired-preferences argument of seed 002); with one judgement each this model is the
// judgement-level mixture and inherits its non-identification.
//
// Data arrive as sufficient statistics: a cell is a distinct (annotator, a - b, order) with its
// counts of a preferred, b preferred and ties; cells are sorted by annotator. For cell c and
// type k, with eta_ck = x_c' theta_k + gamma * order_c, the Davidson (1970) log likelihood is
//   l_ck = w_c * eta_ck - n_c * log D(eta_ck) + t_c * log nu,
//   D(eta) = exp(eta / 2) + exp(-eta / 2) + nu,
// with w_c = (n_a - n_b) / 2, n_c the cell total and t_c its ties. Without ties (nu = 0) the
// same expression is the binomial one, written as w_c = n_a and log D = log1p_exp(eta).
// An annotator's log likelihood under type k is a sum over their cells. The linear part is a
// precomputed I x P matrix of sufficient statistics times theta'; only the log normaliser is
// evaluated per type, on one R x K matrix of linear predictors of the design's R distinct rows
// (from the dense or sparse design, design.stanfunctions): many annotators judge the same
// pairs, so R is often far below C. It is summed per annotator by a sparse annotator x row
// matrix of cell totals n_c. No loop over judgements touches K.
// identify = 1 orders the types by theta[ : , ident_attr] (an `ordered` parameter). That removes
// the label-permutation symmetry only and distorts the posterior where the types overlap on that
// attribute; identify = 0 keeps the labels exchangeable (relabel the draws afterwards).
// theta is sampled in the design's whitened basis when the data say so (whiten = 1; the QR
// reparameterisation, design.stanfunctions): the same posterior, without the correlations the
// design puts between attributes.
// The type shares are sampled as K - 1 free log-ratio coordinates pi_coord:
// pi = softmax(V pi_coord / sqrt(2)) with V the Helmert basis of the sum-to-zero vectors
// (sum_to_zero.stanfunctions), which treats the K types alike. The factor makes pi_coord the
// log odds log(pi_1 / pi_2) when K = 2, the scale of the simplex transform it replaces, so
// Stan's inits (uniform(-2, 2) on the sampler's space) start every pairwise log ratio within
// the same range. The map's log Jacobian is sum(log pi) up to a constant, so pi keeps its
// Dirichlet prior.
// Each free coordinate (of pi, theta, gamma and log nu) is sampled divided by a scale given as
// data (Stan's `multiplier`; 1 by default): a fit started from an earlier fit's draws (a K-fold
// refit from the full fit) passes that fit's posterior scales, which stand in for the diagonal
// mass matrix PyStan does not take, so the chains need no metric adaptation. The posterior is
// the same for any scales.
// loo_mixture = 1 samples, instead of the posterior, the mixture of leave-one-annotator-out
// posteriors of Silva & Zanella (2022, arXiv:2209.09190),
//   q(theta, pi) ∝ p(theta, pi | y) * sum_i c_i / p(y_i | theta, pi),
// with log c_i given as data (loo_log_weight). The importance weight from q to the posterior
// without annotator i is at most 1 / c_i times a constant, so one fit estimates every
// annotator's leave-one-out predictive density with finite variance where Pareto-smoothed
// importance sampling from the posterior fails (pluralstan.checks.compare.mixture_loo_K).
// Any positive c_i gives consistent estimates; c_i near 1 / E[1 / p(y_i | theta, pi) | y] gives
// every leave-one-out posterior an equal share of q, so the draws serve every annotator alike.
// Priors are data, so prior sensitivity and prior-only runs need no recompile.
functions {
  #include functions/design.stanfunctions
  #include functions/annotator_types.stanfunctions
  #include functions/sum_to_zero.stanfunctions
}
data {
  int<lower=1> I;                          // number of annotators
  int<lower=1> C;                          // number of cells (annotator x distinct judgement)
  int<lower=1> P;                          // number of attributes (columns of the design)
  int<lower=1> K;                          // number of latent types
  // the design's R distinct rows (attribute difference a - b), dense or in compressed row
  // storage; cells share them, so each distinct linear predictor is evaluated once per type
  #include functions/design_data.stan
  #include functions/whitening_data.stan
  vector<lower=-1, upper=1>[R] order;      // presentation order of each row (+1 a first, -1 b
                                           // first, 0 unknown)
  array[C] int<lower=1, upper=R> row;      // design row of each cell
  array[C] int<lower=1, upper=I> ann;      // annotator of each cell, sorted ascending
  int<lower=0, upper=1> has_ties;          // 1: Davidson ties; 0: binomial
  int<lower=0, upper=1> has_order;         // 1: estimate a position effect gamma
  int<lower=0, upper=1> identify;          // 1: order the types by theta[ : , ident_attr]
  int<lower=1, upper=P> ident_attr;        // the attribute that orders the types
  array[C, 2 + has_ties] int<lower=0> y;   // counts per cell: b preferred, a preferred[, tie]
  // priors (passed as data)
  vector[P] prior_theta_mean;              // theta[k] ~ normal(prior_theta_mean, prior_theta_sd)
  vector<lower=0>[P] prior_theta_sd;
  vector<lower=0>[K] prior_pi_alpha;       // pi ~ dirichlet(prior_pi_alpha)
  real<lower=0> prior_order_sd;            // gamma ~ normal(0, prior_order_sd)
  real prior_log_nu_mean;                  // log(nu) ~ normal(prior_log_nu_mean, prior_log_nu_sd)
  real<lower=0> prior_log_nu_sd;
  int<lower=0, upper=1> prior_only;        // 1: ignore the likelihood (prior predictive runs)
  int<lower=0, upper=1> replicate;         // 1: generate y_rep (PPC, SBC); 0: skip on big data
  int<lower=0, upper=1> save_membership;   // 1: output membership (I x K per draw); 0: skip
  int<lower=0, upper=1> save_log_lik;      // 1: output log_lik (I per draw, for LOO); 0: skip
  // 1: the annotator's judgements enter the likelihood; 0: held out (K-fold cross-validation:
  // log_lik still scores them, from the posterior of the others)
  vector<lower=0, upper=1>[I] fit_weight;
  // 1: sample the leave-one-annotator-out mixture with weights exp(loo_log_weight) (header)
  int<lower=0, upper=1> loo_mixture;
  vector[loo_mixture ? I : 0] loo_log_weight;
  // scales of the free coordinates on the sampler's space (pluralstan.models.annotator.scale_data)
  vector<lower=0>[K - 1] pi_coord_scale;
  vector<lower=0>[identify ? 0 : K] theta_lead_scale;
  matrix<lower=0>[K, P - 1] theta_rest_scale;
  real<lower=0> gamma_scale;
  real<lower=0> log_nu_scale;
}
transformed data {
  vector[C] n_a = to_vector(y[ : , 2]);
  vector[C] n_b = to_vector(y[ : , 1]);
  vector[C] n_tie = has_ties ? to_vector(y[ : , 3]) : rep_vector(0, C);
  vector[C] n_cell = n_a + n_b + n_tie;
  array[C] int n_cell_int;
  for (c in 1:C) {
    n_cell_int[c] = sum(y[c]);
  }
  // weight of eta in a cell's log likelihood
  vector[C] w_lin = has_ties ? 0.5 * (n_a - n_b) : n_a;
  // annotator x design-row matrix of cell totals, in compressed row storage (one entry per cell)
  vector[C] csr_w = n_cell;
  array[C] int csr_v = row;
  array[I + 1] int csr_u = annotator_starts(ann, I);
  // per-annotator sufficient statistics of the linear part
  matrix[I, P] S = annotator_sums(X, X_w, X_v, X_u, row, ann, w_lin, I, P);
  array[C] int cells = linspaced_int_array(C, 1, C);  // annotator x cell indicator, columns
  vector[I] S_order = csr_matrix_times_vector(I, C, rep_vector(1, C), cells, csr_u,
                                              w_lin .* order[row]);
  vector[I] n_tie_ann = csr_matrix_times_vector(I, C, rep_vector(1, C), cells, csr_u, n_tie);
  int whitened = whiten && !prior_only;  // sample theta's coordinates (design.stanfunctions)
  // prior location and scale of to_vector(theta) (column-major, K x P)
  vector[K * P] theta_mu = to_vector(rep_matrix(prior_theta_mean', K));
  vector[K * P] theta_sigma = to_vector(rep_matrix(prior_theta_sd', K));
  matrix[K, K - 1] V_types = sum_to_zero_basis(K) / sqrt(2);  // pi_coord -> centred log pi
}
parameters {
  vector<multiplier=pi_coord_scale>[K - 1] pi_coord;  // log-ratio coordinates of the shares
  ordered[identify ? K : 0] theta_lead_ordered;    // theta[ : , ident_attr] when identify = 1
  vector<multiplier=theta_lead_scale>[identify ? 0 : K] theta_lead_free;  // its coordinate
                                                                          // when identify = 0
  matrix<multiplier=theta_rest_scale>[K, P - 1] theta_rest;  // the other coordinates
  array[has_order] real<multiplier=gamma_scale> gamma;   // position (shown-first) effect
  array[has_ties] real<multiplier=log_nu_scale> log_nu;  // log Davidson tie parameter
}
transformed parameters {
  simplex[K] pi = softmax(V_types * pi_coord);      // type shares
  // preference vector of each type (rows)
  matrix[K, P] theta = rows_from_coordinates(
      component_coordinates(theta_lead_ordered, theta_lead_free, theta_rest, ident_attr),
      theta_basis, whitened);
}
model {
  to_vector(theta) ~ normal(theta_mu, theta_sigma);
  pi ~ dirichlet(prior_pi_alpha);
  target += sum(log(pi));  // log Jacobian of pi_coord -> pi, up to a constant
  gamma ~ normal(0, prior_order_sd);
  log_nu ~ normal(prior_log_nu_mean, prior_log_nu_sd);
  if (!prior_only) {
    matrix[I, K] lp = type_log_lik(linear_predictors(X, X_w, X_v, X_u, theta, gamma, order),
                                   theta, gamma, log_nu, S, S_order, n_tie_ann,
                                   csr_w, csr_v, csr_u)
                      + rep_matrix(log(pi)', I);
    vector[I] ll = log_sum_exp_rows(lp);  // log p(y_i | theta, pi)
    target += dot_product(fit_weight, ll);
    if (loo_mixture) {
      target += log_sum_exp(loo_log_weight - ll);  // log sum_i c_i / p(y_i | theta, pi)
    }
  }
}
generated quantities {
  // log prior density, for power-scaling sensitivity
  real lprior = normal_lpdf(to_vector(theta) | theta_mu, theta_sigma)
                + dirichlet_lpdf(pi | prior_pi_alpha)
                + normal_lpdf(gamma | 0, prior_order_sd)
                + normal_lpdf(log_nu | prior_log_nu_mean, prior_log_nu_sd);
  // log p(y_i | theta, pi), the unit of leave-one-annotator-out (I per draw: optional on big data)
  vector[save_log_lik ? I : 0] log_lik;
  // P(z_i = k | y_i, theta, pi), pi itself when prior_only (I x K per draw: optional on big data)
  matrix[save_membership ? I : 0, K] membership;
  // replicated counts per cell, same annotators (C x outcomes per draw: optional on big data)
  array[replicate ? C : 0, 2 + has_ties] int y_rep;
  if (save_log_lik || save_membership || replicate) {
    matrix[R, K] eta = linear_predictors(X, X_w, X_v, X_u, theta, gamma, order);
    matrix[I, K] lp = type_log_lik(eta, theta, gamma, log_nu, S, S_order, n_tie_ann,
                                   csr_w, csr_v, csr_u)
                      + rep_matrix(log(pi)', I);
    vector[I] ll = log_sum_exp_rows(lp);  // log p(y_i | theta, pi)
    matrix[I, K] post;  // membership probabilities: the prior shares when prior_only
    if (prior_only) {
      post = rep_matrix(pi', I);
    } else {
      post = exp(lp - rep_matrix(ll, K));
    }
    if (save_log_lik) {
      log_lik = ll;
    }
    if (save_membership) {
      membership = post;
    }
    if (replicate) {
      y_rep = replicate_rng(post, eta[row], ann, n_cell_int, log_nu);
    }
  }
}
