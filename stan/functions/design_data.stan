  // Data-block declarations of the design (rows x P attributes: a - b per row), shared by every
  // program; design.stanfunctions explains the two forms. The rows are the cells (R = C), except
  // in the annotator-level programs, whose cells (annotator x judgement) share R distinct rows.
  int<lower=1> R;                          // rows of the design
  int<lower=0, upper=1> X_sparse;          // 1: compressed row storage; 0: dense X
  matrix[X_sparse ? 0 : R, P] X;           // the dense design
  int<lower=0> X_nnz;                      // non-zero entries (X_sparse = 1; else 0)
  vector[X_nnz] X_w;                       // their values,
  array[X_nnz] int<lower=1, upper=P> X_v;  // their columns
  array[X_sparse ? R + 1 : 0] int<lower=1> X_u;  // and where each row starts in X_w
