"""Procedural multi-modal data generator (a city, runs under different conditions, camera + LiDAR).

Public API:

* :func:`generate_dataset` (``distilvpr synth``): write a complete Oxford- or Boreas-layout dataset.
* :func:`plan_dataset`, :func:`build_world`, :func:`sample_conditions`: the world, route and runs.
* :func:`cloud_statistics`, :func:`realism_table`: compare submaps with the real Oxford fixture.
* :func:`premise_table`: image vs cloud same-place separability across conditions.
"""

from distilvpr_lib.data.synth.conditions import ARCHETYPES, RunCondition, sample_conditions
from distilvpr_lib.data.synth.generate import generate_dataset
from distilvpr_lib.data.synth.lidar import make_lidar_model
from distilvpr_lib.data.synth.oxford import SynthRenderer, plan_dataset, run_primitives
from distilvpr_lib.data.synth.skeleton import GenerationReport, is_complete
from distilvpr_lib.data.synth.stats import cloud_statistics, premise_table, realism_table
from distilvpr_lib.data.synth.world import MATERIALS, World, build_world

__all__ = [
    "ARCHETYPES", "GenerationReport", "MATERIALS", "RunCondition", "SynthRenderer", "World", "build_world", "cloud_statistics",
    "generate_dataset", "is_complete", "make_lidar_model", "plan_dataset", "premise_table", "realism_table",
    "run_primitives", "sample_conditions",
]
