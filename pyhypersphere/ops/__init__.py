"""The operator families (issue 27's layout): each module holds one family's fake kernels,
autograd, public loss function(s) and distributed specification."""
