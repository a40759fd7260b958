"""crysray.filter: the stability funnel over generated crystals (docs/design.md).

Modules (imported one by one; this package imports nothing heavy on its own):

- config: ``FunnelConfig`` (every funnel setting, its command-line options)
- potential: ``load_potential`` (MatGL, converts matgl 2.x checkpoints at load time)
- graphs: batched MatGL graphs, ``single_point_energies``
- relax: ``relax_batch`` (batched FIRE + cell relaxation); relax_ase: ``relax_one_by_one``
  (matgl's own one-crystal relaxer, the reference ``relax_batch`` is checked against)
- energy: ``ElementalReferences``, ``corrected_energy`` (the Materials Project's scale)
- hull: ``HullReference``, ``stable_flags``; local_hull: ``LocalHull`` (offline);
  mp_hull: ``MPHull`` (mp-api, cached); hulls: ``open_hull``, ``prepare_hull``
- composition, uniqueness: SMACT validity; StructureMatcher uniqueness and novelty
- funnel: ``run_funnel``; counts: ``funnel_counts``; actor: ``StabilityFunnel`` (one batch
  of rows through the funnel, as a callable class for Ray); campaign: the funnel over a
  run directory, unit by unit, and run-wide uniqueness
"""
