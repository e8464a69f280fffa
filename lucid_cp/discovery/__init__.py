"""Service discovery: registry (writes), index (watch-fed reads), balancer, servicer."""
