// PAL model A with a linear map, Bayesian (Chen, Chen, Rege & Vinayak 2024, "PAL: pluralistic
// alignment framework for learning from heterogeneous preferences", eq. 8, section 4.1).
//
// Options are attribute vectors x in R^D; f(x) = W x is a full-rank linear map (d' = D, no
// intercept). There are K prototype ideal points p_k in R^D; user i's ideal point is the convex
// combination a_i = sum_k w_ik p_k, w_i on the simplex, and the closer option is preferred:
//   P(a > b | i) = inv_logit(||W (b - a_i)||^2 - ||W (a - a_i)||^2).
// Expanding the squares with the metric M = W'W,
//   logit P(a > b | i) = beta_i' (a - b) - (a' M a - b' M b),   beta_i = sum_k w_ik theta_k,
// with theta_k = 2 M p_k, the linear utility of prototype k. This program samples the identified
// parameterisation (theta_k, M): PAL-A with a linear map is a Bradley-Terry model whose user
// utilities lie in the convex hull of K prototype utilities, plus a shared concave quadratic term.
// The map enters only through M, so the rotations W -> R W that leave all distances unchanged are
// gone; M is parameterised by its Cholesky factor with the prior of W'W for W with iid
// normal(0, prior_W_sd) entries, M ~ Wishart(D, prior_W_sd^2 I) (wishart_cholesky). The
// prototypes p_k = M^{-1} theta_k / 2 are returned in generated quantities. Prototype labels are
// left exchangeable: ordering theta's first attribute created a local mode at the constraint
// boundary that trapped 2 of 4 chains (log density 85 below the mode) in our runs, so
// label-dependent summaries need relabelling (pluralstan.relabel); M, the user utilities and all
// probabilities are label-invariant. The logistic link fixes the scale (PAL leaves h free).
// A reduced-rank map (d' < D) is not offered: the row space of W is then a point on a
// Grassmannian and the posterior was multimodal in our runs (R-hat 1.6 with d' = 2, D = 3).
//
// Identified: M, every user's utility beta_i' x - x' M x, preference probabilities and user-by-user
// agreement. Weakly identified: the prototypes (any simplex of utilities that contains the users'
// beta_i fits equally well; only the priors pull the vertices in) and hence the weights w_i.
//
// Data arrive as counts per distinct cell (option a, option b, order, annotator); the likelihood
// is binomial in each cell. Priors are data, so prior sensitivity needs no recompile.
functions {
  // Each user's linear utility beta_i = sum_k w_ik theta_k, in the prototypes' hull (I x D).
  matrix user_utilities(array[] vector w, matrix theta) {
    matrix[size(w), cols(theta)] beta;
    for (i in 1:size(w)) {
      beta[i] = w[i]' * theta;
    }
    return beta;
  }
  // Log-odds that a is preferred, per cell: (a - b)' beta_user - (a - b)' M (a + b) + gamma order.
  vector pal_eta(matrix X_diff, matrix X_sum, matrix L_M, matrix beta, array[] int annotator,
                 vector order, real gamma) {
    return rows_dot_product(X_diff, beta[annotator])
           - rows_dot_product(X_diff * L_M, X_sum * L_M) + gamma * order;
  }
}
data {
  int<lower=1> I;                        // annotators (users)
  int<lower=1, upper=I> K;               // prototypes
  int<lower=1> D;                        // attributes of an option
  int<lower=1> C;                        // distinct cells (option a, option b, order, annotator)
  matrix[C, D] X_a;                      // attributes of option a per cell
  matrix[C, D] X_b;                      // attributes of option b per cell
  array[C] int<lower=1, upper=I> annotator;
  vector<lower=-1, upper=1>[C] order;    // +1 a shown first, -1 b shown first, 0 unknown
  int<lower=0, upper=1> has_order;       // 1: estimate a position effect gamma
  array[C, 2] int<lower=0> y;            // counts per cell: b preferred, a preferred
  // priors (passed as data)
  real<lower=0> prior_W_sd;              // M = W'W with W iid normal(0, prior_W_sd)
  real<lower=0> prior_theta_sd;          // prototype utilities: iid normal(0, prior_theta_sd)
  vector<lower=0>[K] prior_w_alpha;      // user weights: w_i ~ dirichlet(prior_w_alpha)
  real<lower=0> prior_order_sd;          // gamma ~ normal(0, prior_order_sd)
  int<lower=0, upper=1> prior_only;      // 1: ignore the likelihood (prior predictive runs)
  int<lower=0, upper=1> replicate;       // 1: generate y_rep (PPC, SBC); 0: skip on big data
}
transformed data {
  matrix[C, D] X_diff = X_a - X_b;
  matrix[C, D] X_sum = X_a + X_b;
  array[C] int n_a = y[:, 2];
  array[C] int n_ab;                     // judgements per cell
  for (c in 1:C) {
    n_ab[c] = y[c, 1] + y[c, 2];
  }
  matrix[D, D] L_S = diag_matrix(rep_vector(prior_W_sd, D));  // Cholesky factor of the scale
}
parameters {
  cholesky_factor_cov[D] L_M;            // Cholesky factor of the metric M = W'W
  matrix[K, D] theta;                    // prototype linear utilities
  array[I] simplex[K] w;                 // each user's weights on the prototypes
  array[has_order] real gamma;           // position (shown-first) effect
}
model {
  L_M ~ wishart_cholesky(D, L_S);
  to_vector(theta) ~ normal(0, prior_theta_sd);
  w ~ dirichlet(prior_w_alpha);
  gamma ~ normal(0, prior_order_sd);
  if (!prior_only) {
    n_a ~ binomial_logit(n_ab, pal_eta(X_diff, X_sum, L_M, user_utilities(w, theta), annotator,
                                       order, has_order ? gamma[1] : 0));
  }
}
generated quantities {
  // log prior density, for power-scaling sensitivity
  real lprior = wishart_cholesky_lpdf(L_M | D, L_S)
                + normal_lpdf(to_vector(theta) | 0, prior_theta_sd)
                + dirichlet_lpdf(w | prior_w_alpha)
                + normal_lpdf(gamma | 0, prior_order_sd);
  matrix[D, D] M = multiply_lower_tri_self_transpose(L_M);  // the metric W'W
  // prototype ideal points p_k = M^{-1} theta_k / 2 in the attribute space (PAL's P)
  matrix[K, D] proto = 0.5 * mdivide_right_spd(theta, M);
  // population share of each prototype: the mean weight over the users
  vector[K] pi = rep_vector(0, K);
  for (i in 1:I) {
    pi += w[i] / I;
  }
  // log probability of each annotator's judgements (the exchangeable unit) and replicated counts
  // (C x 2 per draw: optional on big data). The users' utilities beta are computed in Python
  // (pluralstan.models.pal.derive_outputs), not written per draw.
  vector[I] log_lik = rep_vector(0, I);
  array[replicate ? C : 0, 2] int y_rep;
  {
    vector[C] eta = pal_eta(X_diff, X_sum, L_M, user_utilities(w, theta), annotator, order,
                            has_order ? gamma[1] : 0);
    for (c in 1:C) {
      log_lik[annotator[c]] += n_a[c] * log_inv_logit(eta[c])
                               + (n_ab[c] - n_a[c]) * log_inv_logit(-eta[c]);
    }
    if (replicate) {
      for (c in 1:C) {
        y_rep[c, 2] = binomial_rng(n_ab[c], inv_logit(eta[c]));
        y_rep[c, 1] = n_ab[c] - y_rep[c, 2];
      }
    }
  }
}
