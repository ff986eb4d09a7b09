"""Data stages on a Ray cluster: `data tokenize | dedup | prepare --engine ray`.

The same functions as the single-process path do the work (MinHash signatures, LSH banding,
union-find components, the keep/drop rule, tokenization, shard writing, source readers); this
package only cuts the inputs into byte ranges, runs the pieces as Ray tasks and joins their results
in input order, so the outputs are byte-identical to one process whatever the number of workers.

Every task writes its result atomically into OUT/.ray-work/ (a shared filesystem path when the
cluster has several machines) and a rerun skips the pieces already there, so a killed worker (Ray
retries its task) or a killed driver (run the command again) loses only the pieces in flight.
Ray core tasks rather than Ray Data: the stages need exact byte ranges cut at line starts, results
joined in input order, and a shuffle whose pieces stay on disk for a resumed run. Ray is imported
lazily: openseason works without it.
"""
