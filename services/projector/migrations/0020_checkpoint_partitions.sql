-- The rebuild's checkpoint per log partition (docs/event-store.md, "Partitions"): element
-- p + 1 is the position of partition p through which the read model is complete. Positions
-- of different partitions are not comparable, so one number cannot say it. NULL (a
-- checkpoint written before partitioning): rebuilt_through holds for every partition, since
-- it is a position of the log of that time, below every partition's new positions.
ALTER TABLE projector.checkpoint ADD COLUMN rebuilt_through_partitions bigint[];
