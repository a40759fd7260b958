"""Screening campaigns over chemical systems (no Ray here).

A campaign turns chemical systems into cell compositions (crysray.sample.chemspace), samples
k structures of each with a CSP model (crysray.sample), sends them through a tiered funnel
that spends full relaxations only where they pay (``tiers``), and ranks what survives per
chemical system with hull diagrams, CIFs and DFT inputs (``ranking``). ``config`` holds the
campaign's settings, ``stage`` the resumable work units of the funnel.
"""
