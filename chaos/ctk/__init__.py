"""A Chaos Toolkit extension: the testbed's faults, load, probes and rollbacks for ``chaos run``.

Name these modules in a Chaos Toolkit experiment's providers (``{"type": "python", "module":
"chaos.ctk.actions", "func": "fault", "arguments": {...}}``):

* ``chaos.ctk.actions`` — ``fault`` (every fault type the testbed injects, by service, instance
  or link, with the testbed's blast radius and seed rules), ``rollback``, ``start_load`` /
  ``stop_load``, ``scale``, ``deploy``, ``steps`` (a testbed method fragment, e.g. a parallel
  group);
* ``chaos.ctk.probes`` — ``prometheus`` (PromQL through the stack's Prometheus), ``locust``
  (the load's statistics), ``audit``, ``http``, ``localization``, and ``within`` (a testbed
  tolerance, usable as a Chaos Toolkit probe tolerance);
* ``chaos.ctk.control`` — a control that runs an exported testbed experiment's load, warmup,
  safeguards, settle time and final rollback around Chaos Toolkit's own phases.

Everything is recorded in a testbed journal under ``<run>/chaos/ctk-<name>/`` (configuration
``testbed_run_dir`` and ``testbed_name``), so ``testbed chaos rollback`` and ``testbed chaos
report`` work on a Chaos Toolkit run as on the testbed's own. ``testbed chaos export`` writes a
testbed experiment in this form (``chaos.ctk.export``).
"""
