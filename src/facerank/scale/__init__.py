"""Running facerank on engines beyond one process (Ray Data); install with the `scale` extra."""
