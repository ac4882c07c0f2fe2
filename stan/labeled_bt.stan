// Labeled K-mixture Bradley-Terry model: every judgement carries its annotator's subgroup label.
//
// This is identification route (i) of the position paper's Proposition 1: with the label
// observed, subgroup k's preference vector theta_k is learned from the judgements of subgroup k,
// and the mixture weights pi from the labels of the distinct annotators. The data arrive as
// sufficient statistics: a cell is a distinct (attribute difference a - b, presentation order,
// group), with the number of judgements preferring b, preferring a and (optionally) tied. Ties
// follow Davidson (1970) and the position effect enters exactly as in aggregate_bt.stan:
//   eta = (a - b)' theta_{group} + gamma * order,
//   P(a > b) = exp(eta / 2) / D, P(b > a) = exp(-eta / 2) / D, P(tie) = nu / D,
//   D = exp(eta / 2) + exp(-eta / 2) + nu   (inv_logit(eta) when there are no ties).
// Pooling of the subgroup vectors is a data switch, so both variants are one program:
//   partial = 1: theta_k ~ normal(mu, tau), mu ~ normal(prior_theta_mean, prior_theta_sd),
//                tau ~ half-normal(prior_tau_sd);
//   partial = 0: theta_k = prior_theta_mean + prior_theta_sd .* z_k, i.e. independent
//                theta_k ~ normal(prior_theta_mean, prior_theta_sd).
// The hierarchy is partially centred (Papaspiliopoulos, Roberts & Skold 2007; Gorinova, Moore &
// Hoffman 2020), with a weight w in [0, 1] per group and attribute given as data:
//   z_k ~ normal(w .* mu, tau .^ w),  theta_k = mu + tau .^ (1 - w) .* (z_k - w .* mu),
// which implies theta_k ~ normal(mu, tau) for every w. w = 0 is the non-centred form (right for
// a group whose data say little about theta_k, where the centred form has a funnel in tau);
// w = 1 is the centred form (right for a group whose data pin theta_k down, where the
// non-centred form ties z_k to tau). Weights set from a pilot fit of each group's data:
// centring="auto" in Python.
// A third parametrisation serves both regimes at once (conditional = 1; centring="conditional",
// the Python encoder's default up to 50 attributes, where it passes w = 0 otherwise),
// after Christensen, Roberts & Skold (2006): a pilot approximates group k's log likelihood by a
// normal with information I_k and linear term b_k, and mu and each theta_k are sampled as the
// mean of their conditional posterior under that approximation plus the Cholesky square root of
// its covariance times a standardised coordinate:
//   Lambda_k = I_k + diag(tau^-2) = L_k L_k',
//   theta_k = Lambda_k^-1 (b_k + mu ./ tau^2) + L_k'^-1 z_k                   (given mu, tau),
//   A_k = I_k - I_k Lambda_k^-1 I_k   (the precision of (I_k^-1 + diag(tau^2)), without I_k^-1),
//   Q = sum_k A_k + diag(prior_theta_sd^-2) = L_Q L_Q',
//   mu = Q^-1 (sum_k (b_k - I_k Lambda_k^-1 b_k) + prior_theta_mean ./ prior_theta_sd^2)
//        + L_Q'^-1 mu_coord                                                   (given tau).
// The coordinates are then close to standard normal whatever tau: theta_k ~ mu + tau .* z_k as
// tau -> 0 (non-centred), theta_k ~ the data's estimate + I_k^-1/2 z_k where the data dominate
// (centred, and whitened by the design's information), and mu's scale follows tau in the same
// way. The priors are stated on mu and theta_k with the map's log Jacobian, so the posterior is
// the model's whatever the pilot. Its cost per gradient grows as K P^3. With many attributes
// (conditional = 2; centring="conditional-low-rank", the encoder's default beyond 50) each I_k is
// given as a diagonal plus a rank-s correction in the scale of that diagonal,
//   I_k = D_k^1/2 (I + V_k E_k V_k') D_k^1/2 = D_k + B_k E_k B_k',  B_k = D_k^1/2 V_k,
// keeping the s eigenvalues of D_k^-1/2 I_k D_k^-1/2 farthest from 1 (in ratio): a comparison
// graph's few poorly informed directions (every statement against the reference, say), which a
// diagonal alone leaves elongated. Lambda_k = (D_k + diag(tau^-2)) + B_k E_k B_k' is then
// rooted by Woodbury's identity in O(P s^2) (low_rank_root), and mu, whose conditional
// precision Q is a diagonal plus K low-rank terms, takes its exact conditional mean and the
// square root of Q's diagonal.
// Mixture weights: pi ~ dirichlet(prior_pi_alpha) and n_annotators ~ multinomial(pi), where
// n_annotators[k] is the number of distinct annotators labelled k. Priors are data.
functions {
  #include functions/davidson.stanfunctions
  #include functions/cell_outputs.stanfunctions
  // mu and theta of the conditional parametrisation (see the header) from their coordinates
  // mu_coord and z, given tau and the groups' pilot information I_k and linear terms b_k, as one
  // (K + 1) x P matrix: mu' on row 1, theta_k on row k + 1. Adds the map's log Jacobian.
  matrix conditional_hierarchy_lp(vector mu_coord, matrix z, array[] matrix info,
                                  array[] vector score, vector tau, vector prior_mean,
                                  vector prior_sd) {
    int K = rows(z);
    int P = cols(z);
    vector[P] precision = inv_square(tau);
    array[K] matrix[P, P] L;
    array[K] vector[P] Lib;                                       // L_k^-1 b_k
    matrix[P, P] Q = diag_matrix(inv_square(prior_sd));
    vector[P] r = prior_mean .* inv_square(prior_sd);
    for (k in 1:K) {
      L[k] = cholesky_decompose(add_diag(info[k], precision));
      matrix[P, P] LiI = mdivide_left_tri_low(L[k], info[k]);   // L_k^-1 I_k
      Lib[k] = mdivide_left_tri_low(L[k], score[k]);
      Q += info[k] - crossprod(LiI);
      r += score[k] - LiI' * Lib[k];
      target += -sum(log(diagonal(L[k])));
    }
    matrix[P, P] L_Q = cholesky_decompose(0.5 * (Q + Q'));
    target += -sum(log(diagonal(L_Q)));
    matrix[K + 1, P] out;
    out[1] = mdivide_right_tri_low(mdivide_left_tri_low(L_Q, r)' + mu_coord', L_Q);
    for (k in 1:K) {
      out[k + 1] = mdivide_right_tri_low(
        (Lib[k] + mdivide_left_tri_low(L[k], out[1]' .* precision))' + z[k], L[k]);
    }
    return out;
  }
  // S = diag(m)^-1/2 (I + C X C') with S S' = (diag(m)^1/2 (I + C E C') diag(m)^1/2)^-1 for a
  // P x s matrix C of full column rank and a symmetric s x s matrix E (Woodbury; O(P s^2)):
  //   X = L_G'^-1 (L_Z'^-1 - I) L_G^-1,  L_G L_G' = C'C,  L_Z L_Z' = I + L_G' E L_G.
  // Returns X, H = -(X + X' + X C'C X') (so that (I + C X C')(I + C X C')' = I - C H C') and
  // log det (I + C X C') = -log det(L_Z)
  tuple(matrix, matrix, real) low_rank_root(matrix C, matrix E) {
    int s = cols(C);
    matrix[s, s] G = crossprod(C);
    matrix[s, s] L_G = cholesky_decompose(G);
    matrix[s, s] L_Z = cholesky_decompose(add_diag(quad_form_sym(E, L_G), 1));
    matrix[s, s] W = mdivide_left_tri_low(L_Z, identity_matrix(s))';   // L_Z'^-1
    matrix[s, s] X = mdivide_right_tri_low(mdivide_right_tri_low(add_diag(W, -1), L_G)', L_G)';
    return (X, -(X + X' + quad_form(G, X')), -sum(log(diagonal(L_Z))));
  }
  // S_k (S_k' v + z) for a group's root S_k = diag(root_m)^-1 (I + C X C') of low_rank_root,
  // with S_k S_k' = Lambda_k^-1: Lambda_k^-1 v when z = 0 (the group's conditional mean), and
  // the map's step z from it otherwise
  vector root_apply(vector v, vector z, vector root_m, matrix C, matrix X) {
    vector[rows(v)] w = v ./ root_m;
    w += C * (X' * (C' * w)) + z;
    return (w + C * (X * (C' * w))) ./ root_m;
  }
  // the conditional map with each I_k = D_k + B_k E_k B_k' (conditional = 2; see the header):
  // d the K x P diagonals, B the K bases (P x s), e the K x s eigenvalues; as
  // conditional_hierarchy_lp
  matrix low_rank_hierarchy_lp(vector mu_coord, matrix z, matrix d, array[] matrix B, matrix e,
                               array[] vector score, vector tau, vector prior_mean,
                               vector prior_sd) {
    int K = rows(z);
    int P = cols(z);
    int s = cols(e);
    vector[P] precision = inv_square(tau);
    array[K] vector[P] root_m;                                    // sqrt(d_k + tau^-2)
    array[K] matrix[P, s] C;
    array[K] matrix[s, s] X;
    matrix[P, K * s] R;                                           // Q's low-rank part R H R'
    matrix[K * s, K * s] H = rep_matrix(0, K * s, K * s);
    vector[P] q = inv_square(prior_sd);                           // Q's diagonal part
    vector[P] r = prior_mean .* inv_square(prior_sd);
    vector[P] zero = rep_vector(0, P);
    for (k in 1:K) {
      int cols_k = (k - 1) * s;
      root_m[k] = sqrt(d[k]' + precision);
      C[k] = diag_pre_multiply(inv(root_m[k]), B[k]);
      tuple(matrix[s, s], matrix[s, s], real) root = low_rank_root(C[k], diag_matrix(e[k]'));
      X[k] = root.1;
      H[(cols_k + 1):(cols_k + s), (cols_k + 1):(cols_k + s)] = root.2;
      r += precision .* root_apply(score[k], zero, root_m[k], C[k], X[k]);  // Lambda_k^-1 b_k
      q += precision - square(precision ./ root_m[k]);
      R[:, (cols_k + 1):(cols_k + s)] = diag_pre_multiply(precision ./ root_m[k], C[k]);
      target += -sum(log(root_m[k])) + root.3;
    }
    // mu's conditional mean Q^-1 r by Woodbury, without inverting H:
    // Q^-1 r = r ./ q - (R H (I + R' diag(q)^-1 R H)^-1 R' (r ./ q)) ./ q
    matrix[P, K * s] Rq = diag_pre_multiply(inv(q), R);
    vector[P] mean_mu = r ./ q
                        - Rq * (H * mdivide_left(add_diag(R' * Rq * H, 1), Rq' * r));
    vector[P] q_diag = q + rows_dot_product(R * H, R);
    target += -0.5 * sum(log(q_diag));
    matrix[K + 1, P] out;
    out[1] = (mean_mu + mu_coord ./ sqrt(q_diag))';
    for (k in 1:K) {
      out[k + 1] = root_apply(score[k] + precision .* out[1]', z[k]', root_m[k], C[k], X[k])';
    }
    return out;
  }
  // utility difference a - b per cell under the cell's group, x_c' theta[group[c]], plus the
  // position effect gamma * order. The sparse design's columns are those of the K * P block
  // design (X_v_group), so its form is one product with to_vector(theta'); the dense form is
  // one product X * theta' (a cell's value under every group) read at each cell's own group
  // (group_cell, in to_vector's column-major order), which keeps theta one operand instead of
  // copying a row of it per cell
  vector group_eta(matrix X, vector X_w, array[] int X_v_group, array[] int X_u, matrix theta,
                   array[] int group_cell, array[] real gamma, vector order) {
    int C = size(group_cell);
    vector[C] eta = rows(X) == 0
                    ? csr_matrix_times_vector(C, num_elements(theta), X_w, X_v_group, X_u,
                                              to_vector(theta'))
                    : to_vector(X * theta')[group_cell];
    if (size(gamma) > 0) {
      eta += gamma[1] * order;
    }
    return eta;
  }
}
data {
  int<lower=1> C;                        // number of cells
  int<lower=1> P;                        // number of attributes (columns of the design)
  int<lower=1> K;                        // number of subgroups (observed label levels)
  // the design (attribute difference a - b per cell), dense or in compressed row storage
  #include functions/design_data.stan
  vector<lower=-1, upper=1>[C] order;    // presentation order (+1 a first, -1 b first, 0 unknown)
  array[C] int<lower=1, upper=K> group;  // subgroup label of each cell
  int<lower=0, upper=1> has_ties;        // 1: Davidson ties; 0: binomial (no ties in the data)
  int<lower=0, upper=1> has_order;       // 1: estimate a position effect gamma
  array[C, 2 + has_ties] int<lower=0> y; // counts per cell: b preferred, a preferred[, tie]
  #include functions/cell_outputs_data.stan
  array[K] int<lower=0> n_annotators;    // distinct annotators carrying each label
  int<lower=0, upper=1> partial;         // 1: partial pooling of theta_k; 0: independent groups
  matrix<lower=0, upper=1>[K, P] centring;  // weight w of the centred form (partial pooling)
  // the conditional parametrisation (partial pooling; replaces the weights): each group's pilot
  // likelihood information I_k (1: whole; 2: diagonal plus rank pilot_rank, see the header) and
  // linear term b_k = I_k times the likelihood's maximum
  int<lower=0, upper=2> conditional;
  array[conditional == 1 ? K : 0] matrix[P, P] pilot_info;
  int<lower=0> pilot_rank;
  matrix<lower=0>[conditional == 2 ? K : 0, P] pilot_info_diagonal;
  array[conditional == 2 ? K : 0] matrix[P, pilot_rank] pilot_info_basis;
  matrix<lower=-1>[conditional == 2 ? K : 0, pilot_rank] pilot_info_eigen;
  array[conditional ? K : 0] vector[P] pilot_score;
  // QR reparameterisation (pooling none only): theta_k' = theta_basis[k] * z_k', with
  // theta_basis[k] whitening group k's judgement-weighted design (models.base.whitening_data)
  int<lower=0, upper=1> whiten;
  array[whiten ? K : 0] matrix[P, P] theta_basis;
  // priors (passed as data)
  vector[P] prior_theta_mean;            // mean of mu (partial) or of every theta_k (none)
  vector<lower=0>[P] prior_theta_sd;     // sd of mu (partial) or of every theta_k (none)
  vector<lower=0>[P] prior_tau_sd;       // tau ~ half-normal(prior_tau_sd) (partial only)
  vector<lower=0>[K] prior_pi_alpha;     // pi ~ dirichlet(prior_pi_alpha)
  real<lower=0> prior_order_sd;          // gamma ~ normal(0, prior_order_sd)
  real prior_log_nu_mean;                // log(nu) ~ normal(prior_log_nu_mean, prior_log_nu_sd)
  real<lower=0> prior_log_nu_sd;
  int<lower=0, upper=1> prior_only;      // 1: ignore the likelihood (prior predictive runs)
}
transformed data {
  vector[C] n_a = to_vector(y[ : , 2]);         // trials decided for a
  vector[C] n_ab = n_a + to_vector(y[ : , 1]);  // trials decided for a or b
  matrix[C, 2 + has_ties] counts = to_matrix(y);
  // without the likelihood nothing informs theta_k beyond its prior: non-centred
  matrix[K, P] w = prior_only ? rep_matrix(0, K, P) : centring;
  // a group's basis whitens its likelihood, which a prior-only run ignores
  int whitened = whiten && !prior_only;
  if (whiten && partial) {
    reject("whiten = 1 needs partial = 0: the hierarchy's scale, not the design, sets the ",
           "geometry of partially pooled groups");
  }
  if (conditional && !partial) {
    reject("conditional = ", conditional, " needs partial = 1");
  }
  // the pilot approximates the likelihood, which a prior-only run ignores: it samples the
  // weights' form (non-centred when they are 0)
  int conditioned = conditional && !prior_only;
  // sparse design: the columns of its non-zeros in the K * P block design whose row c holds x_c
  // in the block of group[c], so that eta = X_block * to_vector(theta') is one sparse product
  array[X_nnz] int X_v_group;
  for (c in 1:(X_sparse ? C : 0)) {
    for (j in X_u[c]:(X_u[c + 1] - 1)) {
      X_v_group[j] = (group[c] - 1) * P + X_v[j];
    }
  }
  // dense design: the entry of cell c under its own group in to_vector(X * theta')
  array[C] int group_cell;
  for (c in 1:C) {
    group_cell[c] = (group[c] - 1) * C + c;
  }
}
parameters {
  vector[partial ? P : 0] mu_coord;      // mu itself, or its coordinate (conditional form)
  vector<lower=0>[partial ? P : 0] tau;  // between-group spread per attribute (partial pooling)
  matrix[K, P] z;                        // subgroup vectors: partially centred (partial pooling),
                                         // in their group's basis (whitened) or standardised
  simplex[K] pi;                         // subgroup shares in the annotator population
  array[has_order] real gamma;           // position (shown-first) effect
  array[has_ties] real log_nu;           // log Davidson tie parameter
}
transformed parameters {
  vector[partial ? P : 0] mu = mu_coord; // population preference (partial pooling)
  matrix[K, P] theta;                    // preference weights of each subgroup (row k)
  if (conditioned) {
    matrix[K + 1, P] hierarchy
      = conditional == 1
        ? conditional_hierarchy_lp(mu_coord, z, pilot_info, pilot_score, tau, prior_theta_mean,
                                   prior_theta_sd)
        : low_rank_hierarchy_lp(mu_coord, z, pilot_info_diagonal, pilot_info_basis,
                                pilot_info_eigen, pilot_score, tau, prior_theta_mean,
                                prior_theta_sd);
    mu = hierarchy[1]';
    theta = hierarchy[2:(K + 1)];
  } else if (partial) {
    matrix[K, P] mu_k = rep_matrix(mu', K);
    theta = mu_k + pow(rep_matrix(tau', K), 1 - w) .* (z - w .* mu_k);
  } else if (whitened) {
    for (k in 1:K) {
      theta[k] = z[k] * theta_basis[k]';
    }
  } else {
    theta = rep_matrix(prior_theta_mean', K) + z .* rep_matrix(prior_theta_sd', K);
  }
}
model {
  // utility difference a - b per cell, x_c' theta[group[c]]
  vector[C] eta = group_eta(X, X_w, X_v_group, X_u, theta, group_cell, gamma, order);
  if (partial) {
    if (conditioned) {
      // stated on theta_k (and mu below); the map's log Jacobian was added with them
      to_vector(theta) ~ normal(to_vector(rep_matrix(mu', K)), to_vector(rep_matrix(tau', K)));
    } else {
      to_vector(z) ~ normal(to_vector(w .* rep_matrix(mu', K)),
                            to_vector(pow(rep_matrix(tau', K), w)));
    }
    mu ~ normal(prior_theta_mean, prior_theta_sd);
    tau ~ normal(0, prior_tau_sd);
  } else if (whitened) {
    // the prior stays on theta; a linear map has a constant Jacobian
    to_vector(theta) ~ normal(to_vector(rep_matrix(prior_theta_mean', K)),
                              to_vector(rep_matrix(prior_theta_sd', K)));
  } else {
    to_vector(z) ~ std_normal();
  }
  pi ~ dirichlet(prior_pi_alpha);
  gamma ~ normal(0, prior_order_sd);
  log_nu ~ normal(prior_log_nu_mean, prior_log_nu_sd);
  if (!prior_only) {
    n_annotators ~ multinomial(pi);
    if (has_ties) {
      target += sum(counts .* davidson_log_probs(eta, log_nu[1]));
    } else {
      target += binomial_logit_sum(n_a, n_ab, eta);
    }
  }
}
generated quantities {
  // population-average preference sum_k pi_k theta_k (label-invariant)
  vector[P] theta_bar = (pi' * theta)';
  // log prior density of the top-level parameters, for power-scaling sensitivity (the
  // hierarchical z_k enter through mu and tau under partial pooling)
  real lprior = dirichlet_lpdf(pi | prior_pi_alpha)
                + normal_lpdf(gamma | 0, prior_order_sd)
                + normal_lpdf(log_nu | prior_log_nu_mean, prior_log_nu_sd);
  if (partial) {
    // tau is half-normal: twice the normal density on tau > 0
    lprior += normal_lpdf(mu | prior_theta_mean, prior_theta_sd)
              + normal_lpdf(tau | 0, prior_tau_sd) + num_elements(tau) * log2();
  } else {
    lprior += normal_lpdf(to_vector(theta) | to_vector(rep_matrix(prior_theta_mean', K)),
                          to_vector(rep_matrix(prior_theta_sd', K)));
  }
  // the optional outputs (cell_outputs_data.stan): log probability of each outcome in each cell,
  // log likelihood of each unit, replicated counts per cell and outcome
  matrix[save_log_p_cell ? C : 0, 2 + has_ties] log_p_cell;
  vector[save_log_lik ? U : 0] log_lik;
  array[replicate ? C : 0, 2 + has_ties] int y_rep;
  // replicated label counts (the labels are data the model generates, through pi)
  array[K] int n_annotators_rep = multinomial_rng(pi, sum(n_annotators));
  if (save_log_p_cell || save_log_lik || replicate) {
    matrix[C, 2 + has_ties] log_p = outcome_log_probs(
      group_eta(X, X_w, X_v_group, X_u, theta, group_cell, gamma, order), log_nu);
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
