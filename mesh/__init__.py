"""How processes talk: RPC, deadlines, retries, breakers, bulkheads, balancing, discovery."""
