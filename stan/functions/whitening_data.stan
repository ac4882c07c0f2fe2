  // Data-block declarations of the QR reparameterisation (design.stanfunctions): whiten = 1
  // samples theta's coordinates in the basis theta_basis, chosen in Python from the design
  // (pluralstan.models.base.whitening_data); whiten = 0 samples theta itself. Prior-only runs
  // sample theta itself either way, as the prior's own axes suit them.
  int<lower=0, upper=1> whiten;
  matrix[whiten ? P : 0, whiten ? P : 0] theta_basis;
