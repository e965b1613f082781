"""The examples' own conftest: sample_project/ is the code a guest tests, not the host."""
collect_ignore = ["sample_project"]
