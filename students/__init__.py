"""Students: the TIPSv2 architectures users train and ship (zoo, projection heads, checkpoints, export)."""
from students.build import build_student
from students.checkpoint import load_student
from students.heads import ProjectionHeads
from students.model import Student
from students.zoo import STUDENTS, StudentArch, get_arch, register_student

__all__ = ["STUDENTS", "ProjectionHeads", "Student", "StudentArch", "build_student", "get_arch", "load_student",
           "register_student"]
