"""UDP echo server for traffic tests: answers every datagram with its own payload.

usage: udp_echo.py ADDR PORT   (prints "ready" once bound)
"""
import socket
import sys

addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
