"""Load generation with Locust: locustfiles, load shapes, benchmarks."""
