"""The benchmark: generated and LongBench-style multi-document QA, run method by method."""
