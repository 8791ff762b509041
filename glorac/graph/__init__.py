"""Model-side passes: trace, find sites, plan, rewrite into a supernet, fold back."""
