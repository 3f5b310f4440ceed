"""Usage: what each principal and session spent on the model, and what they may spend.

`model` is the usage object (the Messages API's four token counts, requests, USD);
`meter` reads it from a model response as it streams through the gateway; `prices`
turns tokens into USD from `[usage.prices]`; `budgets` decides from a principal's totals
whether it is over a `[[budgets]]` limit and until when; `ledger` keeps the totals (per
session, per principal per UTC day), hands every count to the store and answers the
gateway's and the routes' questions (DESIGN §13).
"""
