"""Files: checkpoint reading (safetensors, shards, legacy pdparams), dtypes, the sharded writer and atomic output folders."""
