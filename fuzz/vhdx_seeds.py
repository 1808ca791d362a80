#!/usr/bin/env python3
"""Makes the vhdx_decode seeds (fuzz/seeds/vhdx/) from images made by qemu-img
and qemu-io, packed as the harness unpacks them (harness::vhdx_unpack: a flags
byte, then offset/length/bytes segments of the nonzero sectors), so that a seed
is a few KiB instead of several MiB of zeros.

Some seeds are qemu-made images changed afterwards (regions moved after the
data, a log entry to replay, 4096-byte sectors, a parent): each says so below.

Run from the repository: python3 fuzz/vhdx_seeds.py
"""

import os
import struct
import subprocess
import tempfile

MIB = 1 << 20
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "vhdx")
UNPACKED_MAX = 16 << 20
BAT_GUID = bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")
METADATA_GUID = bytes.fromhex("06a27c8b90479a4bb8fe575f050f886e")
LOCATOR_GUID = bytes.fromhex("2d5fd3a80bb34d45abf7d3d84834ab0c")


def crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


TABLE = crc32c_table()


def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = TABLE[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def seal(d, at, size):
    d[at + 4:at + 8] = b"\0\0\0\0"
    d[at + 4:at + 8] = struct.pack("<I", crc32c(bytes(d[at:at + size])))


def reseal(d):
    for at in (64 << 10, 128 << 10):
        seal(d, at, 4096)
    for at in (192 << 10, 256 << 10):
        seal(d, at, 65536)


def region(d, guid):
    rt = 192 << 10
    (count,) = struct.unpack_from("<I", d, rt + 8)
    for i in range(count):
        e = rt + 16 + 32 * i
        if d[e:e + 16] == guid:
            off, length = struct.unpack_from("<QI", d, e + 16)
            return e - rt, off, length
    raise SystemExit("region missing")


def pack(d):
    out = bytearray([1])
    n = len(d) // 512
    i = 0
    while i < n:
        if not any(d[i * 512:(i + 1) * 512]):
            i += 1
            continue
        start = i
        while i < n and i - start < 127 and any(d[i * 512:(i + 1) * 512]):
            i += 1
        b = d[start * 512:i * 512]
        out += struct.pack("<IH", start, len(b)) + b
    if len(d) <= UNPACKED_MAX and n and not any(d[(n - 1) * 512:]):
        out += struct.pack("<IH", n - 1, 512) + bytes(512)
    return bytes(out)


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def qemu_io(img, *cmds):
    args = ["qemu-io", "-f", "vhdx"]
    for c in cmds:
        args += ["-c", c]
    run(*args, img)


def write(name, d):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(pack(d))


def main():
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp()
    p = lambda n: os.path.join(tmp, n)

    # qemu-img convert of a small disk with data in a few places (1 MiB blocks).
    with open(p("disk.raw"), "wb") as f:
        f.truncate(6 * MIB)
        for off, fill in ((0, 0x11), (MIB + 4096, 0x22), (3 * MIB - 512, 0x33), (6 * MIB - 1024, 0x44)):
            f.seek(off)
            f.write(bytes([fill]) * 1024)
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", p("disk.raw"), p("conv.vhdx"))
    conv = bytearray(open(p("conv.vhdx"), "rb").read())
    write("convert-1m", conv)

    # A fixed image, every block present.
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "vhdx", "-o",
        "subformat=fixed,block_size=1M,block_state_zero=off", p("disk.raw"), p("fixed.vhdx"))
    write("fixed", bytearray(open(p("fixed.vhdx"), "rb").read()))

    # qemu-io writes in random order: blocks in the file in write order.
    run("qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=1M", p("rand.vhdx"), "6M")
    qemu_io(p("rand.vhdx"), "write -P 0x51 4M 4k", "write -P 0x52 1M 512", "write -P 0x53 5M 8k", "write -P 0x54 0 4k")
    write("random-order", bytearray(open(p("rand.vhdx"), "rb").read()))

    # 32 MiB blocks, the last block cut short by the virtual size.
    run("qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=32M", p("b32.vhdx"), str(100 * MIB + 4096))
    qemu_io(p("b32.vhdx"), "write -P 0x61 100M 4k")
    write("block-32m-short-last", bytearray(open(p("b32.vhdx"), "rb").read()))

    # 256 MiB blocks: a sector bitmap entry after 16 payload entries, and a
    # block after it.
    run("qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=256M", p("b256.vhdx"), str(16 * 256 * MIB + 4096))
    qemu_io(p("b256.vhdx"), "write -P 0x71 4G 4k")
    write("bitmap-interleave", bytearray(open(p("b256.vhdx"), "rb").read()))

    # Changed afterwards: the BAT and the metadata region moved after the data.
    late = bytearray(conv)
    bat_e, bat, bat_len = region(late, BAT_GUID)
    md_e, md, md_len = region(late, METADATA_GUID)
    new_md = -(-len(late) // MIB) * MIB
    new_bat = new_md + md_len
    late += bytes(new_bat + bat_len - len(late))
    for frm, to, n in ((md, new_md, md_len), (bat, new_bat, bat_len)):
        late[to:to + n] = late[frm:frm + n]
        late[frm:frm + n] = bytes(n)
    for rt in (192 << 10, 256 << 10):
        struct.pack_into("<Q", late, rt + bat_e + 16, new_bat)
        struct.pack_into("<Q", late, rt + md_e + 16, new_md)
    reseal(late)
    write("regions-after-data", late)

    # Changed afterwards: a LogGuid and one log entry (a zero descriptor).
    for name, good in (("log-to-replay", True), ("log-bad-crc", False)):
        d = bytearray(conv)
        guid = bytes([0x5A]) * 16
        for at in (64 << 10, 128 << 10):
            d[at + 48:at + 64] = guid
        (log,) = struct.unpack_from("<Q", d, (64 << 10) + 72)
        e = bytearray(4096)
        e[0:4] = b"loge"
        struct.pack_into("<IIQI", e, 8, 4096, 0, 1, 1)
        e[32:48] = guid
        struct.pack_into("<QQ", e, 48, len(d), len(d))
        e[64:68] = b"zero"
        struct.pack_into("<QQQ", e, 72, 4096, 512 << 10, 1)
        struct.pack_into("<I", e, 4, crc32c(bytes(e)) ^ (0 if good else 1))
        d[log:log + 4096] = e
        reseal(d)
        write(name, d)

    # Changed afterwards: 4096-byte logical sectors (qemu refuses them).
    d = bytearray(conv)
    _, md, _ = region(d, METADATA_GUID)
    (count,) = struct.unpack_from("<H", d, md + 10)
    items = {bytes(d[md + 32 * (i + 1):md + 32 * (i + 1) + 16]): struct.unpack_from("<I", d, md + 32 * (i + 1) + 16)[0]
             for i in range(count)}
    lss_off = items[bytes.fromhex("1dbf41816fa90947ba47f233a8faab5f")]
    struct.pack_into("<I", d, md + lss_off, 4096)
    write("sectors-4k", d)

    # Changed afterwards: a parent (has-parent and a parent locator).
    d = bytearray(conv)
    fp_off = items[bytes.fromhex("3767a1ca36fa434db3b633f0aa44e76b")]
    d[md + fp_off + 4] |= 2
    e = md + 32 * (count + 1)
    d[e:e + 16] = LOCATOR_GUID
    struct.pack_into("<III", d, e + 16, 128 << 10, 20, 4)
    struct.pack_into("<H", d, md + 10, count + 1)
    write("differencing", d)


if __name__ == "__main__":
    main()
