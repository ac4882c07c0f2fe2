"""The Bayesian-workflow layer (issue 4): contraction, masking ratio, sensitivity, SBC, PPC, LOO, reports."""
