"""The lab: simulated fleets on one machine (agent processes on a local broker), network-namespace hosts
(root only), a fault-injecting TCP proxy and the demo. Users try a fleet with it and the tests run on it;
the daemon never imports it.
"""
