"""The nemesis soak: randomized, seeded kills, freezes and network cuts of every service while
clients check out with retries and duplicate idempotency keys; then convergence and a check of
what the clients were told against what the stores hold (``testbed chaos soak``).

``checks`` holds the pure cross-checks, ``clients`` the checkout clients, ``nemesis`` the fault
schedule and its execution, ``run`` the whole soak, ``report`` its HTML page.
"""
