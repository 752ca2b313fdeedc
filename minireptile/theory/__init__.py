"""The paper's section 5, measured on real networks with exact Hessian-vector products.

    coefficients   Eqs. (28)-(41): AvgGrad, AvgGradInner, and E[g] of MAML, FOMAML and
                   Reptile fitted as c1 AvgGrad + c2 AvgGradInner       coefficients.py
    spectrum       the Hessians H_i behind those terms, and MAML's Jacobian
                   (I - alpha H_1)...(I - alpha H_k), Eqs. (19)-(21): eigsh on hvp   spectrum.py
    manifold       section 5.2, Eq. (42): E[1/2 D(theta, W_tau)^2] along Reptile   manifold.py

Task distributions (sine, Omniglot) and the Reptile run are in problems.py; tables and
figures in report.py. Meta-gradients come from ``meta`` (inner_steps, maml_gradient,
meta_update), the code that training runs.
"""
from .coefficients import coefficients, predicted
from .manifold import manifold
from .problems import Problem, omniglot_problem, reptile, sine_problem
from .report import plot, render
from .spectrum import extreme_eigenvalues, hessian_operator, jacobian_operator, spectrum

__all__ = ["coefficients", "predicted", "manifold", "Problem", "omniglot_problem", "reptile",
           "sine_problem", "plot", "render", "extreme_eigenvalues", "hessian_operator",
           "jacobian_operator", "spectrum"]
