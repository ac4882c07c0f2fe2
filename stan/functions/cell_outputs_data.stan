  // Data-block declarations of the optional outputs of the programs whose likelihood is over
  // cells (aggregate_bt.stan, labeled_bt.stan; cell_outputs.stanfunctions computes them):
  //   replicate = 1: replicated counts y_rep per cell (posterior predictive checks, SBC);
  //   save_log_p_cell = 1: the log probability of each outcome in each cell, which Python
  //     expands to one log likelihood per judgement;
  //   save_log_lik = 1: the log likelihood summed over the judgements of each of U units
  //     (annotators), through a sparse U x (C * outcomes) matrix counting each unit's judgements
  //     per cell and outcome (column (outcome - 1) * C + cell), in compressed row storage like
  //     the design's.
  // pluralstan computes the last two in Python from the draws (flags 0) and keeps the flags
  // for standalone use and for the tests that compare the two.
  int<lower=0, upper=1> replicate;
  int<lower=0, upper=1> save_log_p_cell;
  int<lower=0, upper=1> save_log_lik;
  int<lower=0> U;
  int<lower=0> unit_nnz;
  vector<lower=0>[unit_nnz] unit_w;
  array[unit_nnz] int<lower=1> unit_v;
  array[U > 0 ? U + 1 : 0] int<lower=1> unit_u;
