"""The edge: API gateway, load balancer and CDN edge caches."""
