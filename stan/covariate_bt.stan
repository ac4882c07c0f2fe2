// Covariate-informed mixing: the annotator-level latent-type Bradley-Terry mixture whose type
// shares depend on annotator covariates (identification route (ii) of the position paper).
//
// Annotator i belongs to latent type z_i in 1..K with
//   P(z_i = k | w_i) = pi_ik,  pi_i = softmax(beta * w_i),
// a multinomial-logit (softmax) regression on the annotator's covariate vector w_i (first entry
// 1, the intercept; categorical covariates dummy-coded, numeric ones standardised, in Python).
// Given the type, every judgement of the annotator follows the Bradley-Terry / Davidson model
// with the type's theta_k, and the annotator's whole set of judgements is mixed as one block,
//   p(y_i | theta, beta) = sum_k pi_ik prod_j p(y_ij | theta_k).
// Covariates that predict the type make annotators with similar covariates share information
// about their type, and tie the type labels to observable characteristics.
//
// The likelihood is computed exactly as in annotator_bt.stan (with the same shared functions,
// functions/annotator_types.stanfunctions): cells are distinct (annotator, a - b, order) with
// their outcome counts, sorted by annotator; the linear part of each annotator's log likelihood
// is a precomputed I x P matrix of sufficient statistics times theta', the log normaliser is
// evaluated on one R x K matrix of linear predictors of the design's R distinct rows, summed per
// annotator by a sparse annotator x row matrix of cell totals. For
// cell c and type k, with eta_ck = x_c' theta_k + gamma * order_c,
//   l_ck = w_c * eta_ck - n_c * log D(eta_ck) + t_c * log nu,
//   D(eta) = exp(eta / 2) + exp(-eta / 2) + nu  (Davidson ties; nu = 0: binomial),
// with w_c = (n_a - n_b) / 2 (n_a without ties), n_c the cell total and t_c its ties.
// identify = 1 orders the types by theta[ : , ident_attr] (an `ordered` parameter). That removes
// the label-permutation symmetry only and distorts the posterior where the types overlap on that
// attribute; identify = 0 keeps the labels exchangeable (relabel the draws afterwards).
//
// Sum-to-zero mixing coefficients. The softmax only sees differences between types,
//   P(z_i = k | w_i) / P(z_i = j | w_i) = exp((beta[k] - beta[j]) w_i),
// so adding any vector to every row of beta changes nothing, and one constraint per covariate is
// needed. Fixing a reference row (beta[1] = 0) would tie the meaning of every row to type 1, which
// a relabelling of the types does not preserve. Here every column of beta sums to zero across
// types instead: beta[k, q] is type k's deviation from the average type, and permuting the types
// permutes the rows of beta and nothing else, so relabelled draws of beta are draws of the same
// parameters and need no re-referencing. Each column is beta[ : , q] = V z_q with V the K x (K - 1)
// orthonormal Helmert basis of the sum-to-zero subspace (functions/sum_to_zero.stanfunctions:
// V' V = I, V' 1 = 0, V V' = I - J / K) and free coordinates z_q = beta_raw[ : , q].
// Prior: z_q ~ normal(0, s_q) iid. Then beta[ : , q] ~ multi_normal(0, s_q^2 (I - J / K)), so
//   sd(beta[k, q]) = s_q sqrt(1 - 1 / K),   cor(beta[k, q], beta[j, q]) = -1 / (K - 1),
//   sd(beta[k, q] - beta[j, q]) = s_q sqrt(2),
// the same for every type and every pair of types (the prior is exchangeable), and with
//   s_q = prior_beta_sd[q] sqrt(K / (K - 1))
// every type's coefficient has marginal sd prior_beta_sd[q] and every contrast between two types
// (a log odds ratio per unit of covariate q) has sd prior_beta_sd[q] sqrt(2 K / (K - 1)). As ||V z|| = ||z||, this is the density of
// Stan's `sum_to_zero_vector beta_q ~ normal(0, s_q)` (Stan >= 2.36) up to a constant; V z is
// linear, so no Jacobian is needed. A permutation P of the types maps z_q to V' P V z_q, an
// orthogonal map of the free coordinates: prior, likelihood and posterior are all invariant.
// theta is sampled in the design's whitened basis when the data say so (whiten = 1; the QR
// reparameterisation, design.stanfunctions): the same posterior, without the correlations the
// design puts between attributes.
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
  int<lower=1> Q;                          // covariates per annotator, intercept included
  matrix[I, Q] W;                          // annotator covariates; column 1 is the intercept (1)
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
  vector<lower=0>[Q] prior_beta_sd;        // marginal prior sd of every beta[k, q] (header)
  real<lower=0> prior_order_sd;            // gamma ~ normal(0, prior_order_sd)
  real prior_log_nu_mean;                  // log(nu) ~ normal(prior_log_nu_mean, prior_log_nu_sd)
  real<lower=0> prior_log_nu_sd;
  int<lower=0, upper=1> prior_only;        // 1: ignore the likelihood (prior predictive runs)
  int<lower=0, upper=1> replicate;         // 1: generate y_rep (PPC, SBC); 0: skip on big data
  int<lower=0, upper=1> save_membership;   // 1: output membership (I x K per draw); 0: skip
  int<lower=0, upper=1> save_log_lik;      // 1: output log_lik (I per draw, for LOO); 0: skip
  int<lower=0, upper=1> save_pi_annotator; // 1: output pi_annotator (I x K per draw); 0: skip
  // scales of the free coordinates on the sampler's space (as in annotator_bt.stan; a fit
  // started in a searched mode takes the mode's Laplace sds, pluralstan.pipeline.search_inits)
  matrix<lower=0>[K - 1, Q] beta_raw_scale;
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
  // orthonormal basis of the sum-to-zero subspace of R^K (K x (K - 1))
  matrix[K, K - 1] V_types = sum_to_zero_basis(K);
  // prior scale s_q of to_vector(beta_raw) (column-major, (K - 1) x Q): see the header
  vector[(K - 1) * Q] beta_sigma
      = to_vector(rep_matrix(prior_beta_sd' * (K > 1 ? sqrt(K / (K - 1.0)) : 1), K - 1));
}
parameters {
  // coordinates of beta's columns in V_types
  matrix<multiplier=beta_raw_scale>[K - 1, Q] beta_raw;
  ordered[identify ? K : 0] theta_lead_ordered;    // theta[ : , ident_attr] when identify = 1
  vector<multiplier=theta_lead_scale>[identify ? 0 : K] theta_lead_free;  // its coordinate
                                                                          // when identify = 0
  matrix<multiplier=theta_rest_scale>[K, P - 1] theta_rest;  // the other coordinates
  array[has_order] real<multiplier=gamma_scale> gamma;   // position (shown-first) effect
  array[has_ties] real<multiplier=log_nu_scale> log_nu;  // log Davidson tie parameter
}
transformed parameters {
  // preference vector of each type (rows)
  matrix[K, P] theta = rows_from_coordinates(
      component_coordinates(theta_lead_ordered, theta_lead_free, theta_rest, ident_attr),
      theta_basis, whitened);
  // softmax coefficients; every column sums to zero across the types
  matrix[K, Q] beta = V_types * beta_raw;
}
model {
  to_vector(theta) ~ normal(theta_mu, theta_sigma);
  to_vector(beta_raw) ~ normal(0, beta_sigma);
  gamma ~ normal(0, prior_order_sd);
  log_nu ~ normal(prior_log_nu_mean, prior_log_nu_sd);
  if (!prior_only) {
    matrix[I, K] eta_pi = W * beta';                // softmax linear predictor per annotator
    matrix[I, K] lp = type_log_lik(linear_predictors(X, X_w, X_v, X_u, theta, gamma, order),
                                   theta, gamma, log_nu, S, S_order, n_tie_ann,
                                   csr_w, csr_v, csr_u);
    // sum_i log sum_k pi_ik p(y_i | theta_k), with annotator i's type shares
    // log pi_i = eta_pi[i] - log_sum_exp(eta_pi[i])
    target += sum(log_sum_exp_rows(lp + eta_pi) - log_sum_exp_rows(eta_pi));
  }
}
generated quantities {
  // log prior density, for power-scaling sensitivity
  real lprior = normal_lpdf(to_vector(theta) | theta_mu, theta_sigma)
                + normal_lpdf(to_vector(beta_raw) | 0, beta_sigma)
                + normal_lpdf(gamma | 0, prior_order_sd)
                + normal_lpdf(log_nu | prior_log_nu_mean, prior_log_nu_sd);
  // P(z_i = k | w_i, beta): each annotator's prior type shares (I x K per draw: optional)
  matrix[save_pi_annotator ? I : 0, K] pi_annotator;
  vector[K] pi;                // type shares averaged over these annotators
  // log p(y_i | theta, beta, w_i), the unit of leave-one-annotator-out (I per draw: optional)
  vector[save_log_lik ? I : 0] log_lik;
  // P(z_i = k | y_i, w_i, theta, beta), pi_annotator if prior_only (I x K per draw: optional)
  matrix[save_membership ? I : 0, K] membership;
  // replicated counts per cell, same annotators (C x outcomes per draw: optional on big data)
  array[replicate ? C : 0, 2 + has_ties] int y_rep;
  {
    matrix[I, K] eta_pi = W * beta';
    // log of each annotator's prior type shares
    matrix[I, K] log_shares = eta_pi - rep_matrix(log_sum_exp_rows(eta_pi), K);
    matrix[I, K] shares = exp(log_shares);
    pi = (rep_row_vector(1.0 / I, I) * shares)';
    if (save_pi_annotator) {
      pi_annotator = shares;
    }
    // the per-annotator outputs: the judgements' likelihood under every type, only when asked
    if (save_log_lik || save_membership || replicate) {
      matrix[R, K] eta = linear_predictors(X, X_w, X_v, X_u, theta, gamma, order);
      matrix[I, K] lp = type_log_lik(eta, theta, gamma, log_nu, S, S_order, n_tie_ann,
                                     csr_w, csr_v, csr_u)
                        + log_shares;
      vector[I] ll = log_sum_exp_rows(lp);  // log p(y_i | theta, beta, w_i)
      matrix[I, K] post;  // membership probabilities: the prior shares when prior_only
      if (prior_only) {
        post = shares;
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
}
