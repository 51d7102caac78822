"""Small-to-large distillation: generations of model size, each student kickstarted by the last.

Modules: schedule (`DistillConfig`, the kickstarting weight), stage (the pure JSON stage state:
switches, handover, metrics), objective (`Kickstarting`, the distance to the teacher),
generations (each generation's policy, the student's init, the teacher snapshot on disk).
"""

from ada_curriculum.distill import stage
from ada_curriculum.distill.generations import (
    Generation, check_generations, generation_config, generation_policy, init_student, load_teacher, param_count,
    policy_at, presets_of, save_teacher, teacher_dir,
)
from ada_curriculum.distill.objective import (
    TEACHER_KEY, WEIGHT_KEY, Kickstarting, distance_to_teacher, policy_loss, with_teacher,
)
from ada_curriculum.distill.schedule import DistillConfig, kickstart_ends, kickstart_weight

__all__ = [
    "DistillConfig", "Generation", "Kickstarting", "TEACHER_KEY", "WEIGHT_KEY", "check_generations",
    "distance_to_teacher", "generation_config", "generation_policy", "init_student", "kickstart_ends",
    "kickstart_weight", "load_teacher", "param_count", "policy_at", "policy_loss", "presets_of", "save_teacher",
    "stage", "teacher_dir", "with_teacher",
]
