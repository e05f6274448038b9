"""mi_ssl_jax: self-supervised learning through matrix information theory.

Subpackages are imported explicitly (``from mi_ssl_jax import matrix``) so that
importing the package stays cheap and free of TensorFlow.
"""

__version__ = "0.1.0"
