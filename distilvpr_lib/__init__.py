"""DistilVPR workbench: cross-modal knowledge distillation for place recognition.

Subpackages: ``data`` (file formats, splits, generator, datasets), ``models`` (sparse backends,
teacher, student), ``losses`` (triplet, hyperbolic maths, distillation catalogue), ``engine``
(training, teacher cache, evaluation), ``viz`` (figures and the retrieval browser).
Importing this package has no side effects.
"""

__version__ = "0.1.0"
