"""crysray.filter: the stability funnel over generated crystals (docs/style.md §5, §6.11).

Modules (imported one by one; this package imports nothing heavy on its own):

- potential: ``load_potential`` (MatGL, converts matgl 2.x checkpoints at load time)
- graphs: batched MatGL graphs, ``single_point_energies``
- relax: ``relax_batch`` (batched FIRE + cell relaxation); relax_ase: ``relax_one_by_one``
- hull, reference: ``LinearHullReference``, ``build_reference`` (cached), ``HullReference``
- composition, uniqueness: SMACT validity; StructureMatcher uniqueness and novelty
- funnel: ``run_funnel``; counts: ``funnel_counts``; actor: ``StabilityFunnel`` (Ray
  ``map_batches``)
"""
