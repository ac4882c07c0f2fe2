  // Data-block declarations of the design (cells x attributes: a - b per cell), shared by every
  // program with C cells and P attributes; design.stanfunctions explains the two forms.
  int<lower=0, upper=1> X_sparse;          // 1: compressed row storage; 0: dense X
  matrix[X_sparse ? 0 : C, P] X;           // the dense design
  int<lower=0> X_nnz;                      // non-zero entries (X_sparse = 1; else 0)
  vector[X_nnz] X_w;                       // their values,
  array[X_nnz] int<lower=1, upper=P> X_v;  // their columns
  array[X_sparse ? C + 1 : 0] int<lower=1> X_u;  // and where each row starts in X_w
