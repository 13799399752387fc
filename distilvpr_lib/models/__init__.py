"""Models: the MinkLoc++ teacher (sparse cloud branch + image branch, cat fusion) and the image student.

Public API (see docs/INTERFACES.md):

* :func:`build_teacher` / :func:`build_student` from a :class:`~distilvpr_lib.config.ModelConfig`;
* ``SPARSE_BACKENDS`` (``"torch"``, ``"minkowski"``) and :func:`get_sparse_backend`;
* :func:`load_image_backbone_weights` (local file only) and :func:`load_reference_teacher_state_dict`.
"""

from __future__ import annotations

from .image import IMAGENET_WEIGHT_FILES, ImageBranch, ImageGeM, load_image_backbone_weights, resolve_image_weights
from .sparse import SPARSE_BACKENDS, CloudBranch, MinkFPN, MinkGeM, SparseBackend, get_sparse_backend
from .student import ImageStudent, build_student
from .teacher import (
    MinkLocMultimodal,
    build_cloud_branch,
    build_teacher,
    load_reference_teacher_state_dict,
    teacher_output_dim,
)

__all__ = [
    "build_teacher", "build_student", "build_cloud_branch", "teacher_output_dim",
    "MinkLocMultimodal", "ImageStudent", "ImageBranch", "ImageGeM", "CloudBranch", "MinkFPN", "MinkGeM",
    "SPARSE_BACKENDS", "SparseBackend", "get_sparse_backend",
    "load_image_backbone_weights", "resolve_image_weights", "load_reference_teacher_state_dict",
    "IMAGENET_WEIGHT_FILES",
]
