"""What API backbones share: the request pipeline (:mod:`.api`), context fitting, retries with
backoff, rate limits shared by concurrent investigations, and the price table."""
