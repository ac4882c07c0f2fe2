// PAL model A with a linear map, Bayesian (Chen, Chen, Rege & Vinayak 2024, "PAL: pluralistic
// alignment framework for learning from heterogeneous preferences", eq. 8, section 4.1).
//
// Each option x in R^D (its attribute vector) is mapped to a latent space by a linear map,
// f(x) = W x with W an L x D matrix (L <= D). There are K prototype ideal points q_k in R^L and
// user i's ideal point is a convex combination of them, u_i = sum_k w_ik q_k, w_i on the simplex.
// The closer option is preferred:
//   P(a > b | i) = inv_logit(||W b - u_i||^2 - ||W a - u_i||^2)
//                = inv_logit(2 (W (a - b))' u_i - (W (a - b))' (W (a + b)) + gamma * order).
// The prototypes live in the latent space (q_k = f(p_k) in the paper's notation): with a linear f
// the paper's a_i = P w_i gives f(a_i) = sum_k w_ik f(p_k), and the components of p_k in the null
// space of W would be unidentified, so we parameterise the identified images q_k directly.
// The logistic link fixes the scale of the latent space (PAL leaves h unspecified).
//
// Identification. Distances are invariant under rotations and reflections of the latent space,
// W -> R W, q_k -> R q_k (R orthogonal). We fix them by keeping W in row-echelon form
// (W[j, l] = 0 for l < j, W[j, j] > 0): every W has exactly one such representative, R' W with
// W = R T its LQ-type decomposition. Its prior is the Bartlett decomposition of a W with iid
// normal(0, prior_W_sd) entries ((W[j, j] / sd)^2 ~ chi_square(L - j + 1), the rest normal), so
// the prior on everything rotation-invariant (the metric W'W, user utilities, preference
// probabilities) is exactly that of iid normal W and rotation-invariant normal prototypes; the
// constraint only chooses a representative. Prototype labels are fixed by ordering their first
// latent coordinate. Translations are not a symmetry here because f has no intercept (f(0) = 0),
// unless some combination of the attributes is constant across all options (checked in Python).
// Identified: the metric M = W'W, each user's utility U_i(x) = 2 u_i' W x - x' M x (its linear
// part beta_i = 2 W' u_i), all preference probabilities and user-by-user agreement. Weakly
// identified: the prototypes themselves (any simplex containing the users' ideal points fits
// equally well; only their prior pulls them in) and hence the weights w_i.
//
// Data arrive as counts per distinct cell (option a, option b, order, annotator); the likelihood
// is binomial in each cell. Priors are data, so prior sensitivity needs no recompile.
functions {
  // The L x D row-echelon map: positive diagonal, zeros left of it, free entries right of it.
  matrix echelon(vector W_diag, vector W_free, int D) {
    int L = rows(W_diag);
    matrix[L, D] W = rep_matrix(0, L, D);
    int pos = 1;
    for (j in 1:L) {
      W[j, j] = W_diag[j];
      for (l in (j + 1):D) {
        W[j, l] = W_free[pos];
        pos += 1;
      }
    }
    return W;
  }
  // Log density of the row-echelon representative of a W with iid normal(0, sd) entries
  // (Bartlett decomposition); includes the Jacobian of diag -> diag^2.
  real bartlett_lpdf(vector W_diag, vector W_free, real sd) {
    int L = rows(W_diag);
    real lp = normal_lpdf(W_free | 0, sd);
    for (j in 1:L) {
      lp += chi_square_lpdf(square(W_diag[j] / sd) | L - j + 1) + log2() + log(W_diag[j])
            - 2 * log(sd);
    }
    return lp;
  }
  // Log-odds that option a is preferred, per cell: 2 (W d)' u - (W d)' (W s) + gamma * order,
  // with d = a - b, s = a + b and u the ideal point of the cell's annotator.
  vector pal_eta(matrix X_diff, matrix X_sum, matrix W, matrix U, array[] int annotator,
                 vector order, array[] real gamma) {
    matrix[rows(X_diff), rows(W)] Zd = X_diff * W';
    vector[rows(X_diff)] eta = rows_dot_product(Zd, 2 * U[annotator] - X_sum * W');
    if (size(gamma)) {
      eta += gamma[1] * order;
    }
    return eta;
  }
}
data {
  int<lower=1> I;                        // annotators (users)
  int<lower=1, upper=I> K;               // prototypes
  int<lower=1> D;                        // attributes of an option
  int<lower=1, upper=D> L;               // latent dimension
  int<lower=1> C;                        // distinct cells (option a, option b, order, annotator)
  matrix[C, D] X_a;                      // attributes of option a per cell
  matrix[C, D] X_b;                      // attributes of option b per cell
  array[C] int<lower=1, upper=I> annotator;
  vector<lower=-1, upper=1>[C] order;    // +1 a shown first, -1 b shown first, 0 unknown
  int<lower=0, upper=1> has_order;       // 1: estimate a position effect gamma
  array[C, 2] int<lower=0> y;            // counts per cell: b preferred, a preferred
  // priors (passed as data)
  real<lower=0> prior_W_sd;              // entries of the map: iid normal(0, prior_W_sd)
  real<lower=0> prior_proto_sd;          // prototype coordinates: iid normal(0, prior_proto_sd)
  vector<lower=0>[K] prior_w_alpha;      // user weights: w_i ~ dirichlet(prior_w_alpha)
  real<lower=0> prior_order_sd;          // gamma ~ normal(0, prior_order_sd)
  int<lower=0, upper=1> prior_only;      // 1: ignore the likelihood (prior predictive runs)
}
transformed data {
  matrix[C, D] X_diff = X_a - X_b;
  matrix[C, D] X_sum = X_a + X_b;
  array[C] int n_a = y[:, 2];
  array[C] int n_ab;                     // judgements per cell
  for (c in 1:C) {
    n_ab[c] = y[c, 1] + y[c, 2];
  }
}
parameters {
  vector<lower=0>[L] W_diag;             // diagonal of the row-echelon map
  vector[L * D - L * (L + 1) %/% 2] W_free;  // entries right of the diagonal
  ordered[K] proto_first;                // first latent coordinate of each prototype (labels)
  matrix[L - 1, K] proto_rest;           // remaining latent coordinates
  array[I] simplex[K] w;                 // each user's weights on the prototypes
  array[has_order] real gamma;           // position (shown-first) effect
}
transformed parameters {
  matrix[L, D] W = echelon(W_diag, W_free, D);
  matrix[L, K] proto = append_row(proto_first', proto_rest);
  matrix[I, L] u;                        // user ideal points in the latent space
  for (i in 1:I) {
    u[i] = (proto * w[i])';
  }
}
model {
  W_diag ~ bartlett(W_free, prior_W_sd);
  proto_first ~ normal(0, prior_proto_sd);
  to_vector(proto_rest) ~ normal(0, prior_proto_sd);
  w ~ dirichlet(prior_w_alpha);
  gamma ~ normal(0, prior_order_sd);
  if (!prior_only) {
    n_a ~ binomial_logit(n_ab, pal_eta(X_diff, X_sum, W, u, annotator, order, gamma));
  }
}
generated quantities {
  // log prior density, for power-scaling sensitivity
  real lprior = bartlett_lpdf(W_diag | W_free, prior_W_sd)
                + normal_lpdf(proto_first | 0, prior_proto_sd)
                + normal_lpdf(to_vector(proto_rest) | 0, prior_proto_sd)
                + dirichlet_lpdf(w | prior_w_alpha)
                + normal_lpdf(gamma | 0, prior_order_sd);
  // linear part of each prototype's utility U_k(x) = theta_k' x - x' W'W x (BT units)
  matrix[K, D] theta = 2 * proto' * W;
  // population share of each prototype: the mean weight over the users
  vector[K] pi = rep_vector(0, K);
  for (i in 1:I) {
    pi += w[i] / I;
  }
  // log probability of each annotator's judgements (the exchangeable unit) and replicated counts
  vector[I] log_lik = rep_vector(0, I);
  array[C, 2] int y_rep;
  {
    vector[C] eta = pal_eta(X_diff, X_sum, W, u, annotator, order, gamma);
    for (c in 1:C) {
      log_lik[annotator[c]] += n_a[c] * log_inv_logit(eta[c])
                               + (n_ab[c] - n_a[c]) * log_inv_logit(-eta[c]);
      y_rep[c, 2] = binomial_rng(n_ab[c], inv_logit(eta[c]));
      y_rep[c, 1] = n_ab[c] - y_rep[c, 2];
    }
  }
}
