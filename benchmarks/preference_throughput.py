"""DPO training tokens/s and peak memory: hybridrl's PairwiseTrainer next to TRL's DPOTrainer.

The measurement lives in ``hybridrl.bench.pref_throughput`` (the throughput suite runs it too); the
preset is ``benchmarks/configs/preference/throughput.yaml``.

    HYBRIDRL_THREADS=1 python benchmarks/preference_throughput.py --out runs/bench/throughput.json
"""

from hybridrl.bench.pref_throughput import main

if __name__ == "__main__":
    main()
