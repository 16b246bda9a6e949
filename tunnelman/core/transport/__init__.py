"""How the first hop to the bastion is reached: TCP (ssh), an SSM session (ssm) or an EC2 Instance
Connect Endpoint's websocket (eice, `tunnelman.core.transport.eice`).

Called by `tunnelman.core.ssh.connection.open_route` for a profile whose `transport` is not "ssh".
Each transport hands back a socket SSH runs over as over TCP (host key checked as usual).
"""
