"""The edge's HTTP front: the wire lane (an HTTP/1.1 server below aiohttp) and the fast lane
(requests served before aiohttp's router), which the balancer and the CDN PoPs start on."""
