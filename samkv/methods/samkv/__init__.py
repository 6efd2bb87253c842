"""SamKV: complementary sparse selection over all contexts, then local recomputation.

`method` holds the selection; `evidence` the looks it takes at the stored contexts (`probe`,
`reprobe`, `entity`), each built from the generic request state of `PlanContext`.
"""

from samkv.methods.samkv.method import SamKV, SamKVQuestion

__all__ = ["SamKV", "SamKVQuestion"]
