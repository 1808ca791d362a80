//! The writer against real targets: regular files, loop block devices,
//! a filesystem without O_DIRECT (ramfs), and targets that fail.
//!
//! Block-device and mount tests need root and `losetup`; elsewhere they print
//! why they were skipped and pass.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use streamdisk::format::{ExtentSink, SinkError};
use streamdisk::target::{Depth, Target, TargetError, TargetKind, TargetOptions};
use streamdisk::testing::Prng;

use crate::common::{have_tool, is_root, read_at, tempdir, LoopDevice};

// ---------- environment guards ----------

/// Why block-device tests cannot run here, if they cannot.
fn loop_unavailable() -> Option<&'static str> {
    if !is_root() {
        Some("not root")
    } else if !have_tool("losetup") {
        Some("losetup is missing")
    } else {
        None
    }
}

macro_rules! require_loop {
    ($name:expr) => {
        if let Some(why) = loop_unavailable() {
            println!("skipped {}: {why}", $name);
            return;
        }
    };
}

/// A loop device over `backing`; `require_loop!` has checked that one can
/// be made, so failing to is a test failure.
fn attach(backing: &Path) -> LoopDevice {
    LoopDevice::attach(backing).expect("losetup failed")
}

/// A filesystem mounted on a directory, unmounted on drop.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(fstype: &str, options: &str, dir: &Path) -> io::Result<Mount> {
        let st = Command::new("mount")
            .args(["-t", fstype, "-o", options, fstype])
            .arg(dir)
            .status()?;
        if st.success() {
            Ok(Mount {
                dir: dir.to_path_buf(),
            })
        } else {
            Err(io::Error::other(format!("mount -t {fstype} failed")))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

// ---------- layouts ----------

/// One extent of a test image.
enum Piece {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

/// Splits `[0, vsize)` into data and zero pieces of mixed sizes: sub-block
/// 512-byte multiples, odd sizes, whole clusters and long zero runs.
fn layout(rng: &mut Prng, vsize: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < vsize {
        let len = match rng.below(6) {
            0 => 512 * (1 + rng.below(8)),
            1 => 1 + rng.below(8999),
            2 => 64 << 10,
            3 => 4096 * (1 + rng.below(40)),
            4 => 512,
            _ => 1 + rng.below((3u64 << 20) - 1),
        }
        .min(vsize - off);
        // Data 55% of the time.
        if rng.below(100) < 55 && len < (2 << 20) {
            let mut d = rng.bytes(len as usize);
            // Never all zeros, so the expected image tells data from zeros.
            d[0] |= 1;
            out.push(Piece::Data(off, d));
        } else {
            out.push(Piece::Zero(off, len));
        }
        off += len;
    }
    out
}

/// Puts `v` in a random order (Fisher-Yates).
fn shuffle<T>(v: &mut [T], rng: &mut Prng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// The bytes `[0, vsize)` should hold after writing `pieces`.
fn expected(pieces: &[Piece], vsize: u64) -> Vec<u8> {
    let mut img = vec![0u8; vsize as usize];
    for p in pieces {
        if let Piece::Data(off, d) = p {
            img[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
    }
    img
}

fn feed(t: &mut Target, pieces: &[Piece]) -> Result<(), SinkError> {
    for p in pieces {
        match p {
            Piece::Data(off, d) => t.data(*off, d)?,
            Piece::Zero(off, len) => t.zero(*off, *len)?,
        }
    }
    Ok(())
}

fn small_opts() -> TargetOptions {
    TargetOptions {
        buffer_size: 64 << 10,
        depth: Depth::Fixed(3),
        ..TargetOptions::default()
    }
}

/// Writes `len` random bytes to `path` and returns them: stale data the
/// tests compare byte for byte, so a write past the virtual size or a
/// read-modify-write that merges the wrong old bytes shows (a constant fill
/// such as `common::fill_file` would hide the latter).
fn stale_file(path: &Path, len: u64, seed: u64) -> Vec<u8> {
    let v = Prng::new(seed).bytes(len as usize);
    std::fs::write(path, &v).expect("write stale data");
    v
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

// ---------- files ----------

#[test]
fn file_random_order_extents_match() {
    for seed in 1..=4u64 {
        let mut rng = Prng::new(seed);
        let vsize = ((4u64 << 20) + rng.below(5 << 20)) | 1;
        let mut pieces = layout(&mut rng, vsize);
        let want = expected(&pieces, vsize);
        shuffle(&mut pieces, &mut rng);
        let dir = tempdir();
        let p = dir.path().join("disk.img");
        stale_file(&p, 12 << 20, seed + 100);
        let opts = if seed % 2 == 0 {
            small_opts()
        } else {
            TargetOptions::default()
        };
        let mut t = Target::open(&p, &opts).expect("open");
        t.set_virtual_size(vsize).expect("vsize");
        feed(&mut t, &pieces).expect("feed");
        let stats = t.finish().expect("finish");
        let got = std::fs::read(&p).expect("read");
        assert_eq!(got.len() as u64, vsize, "seed {seed}: file length");
        assert_eq!(first_diff(&got, &want), None, "seed {seed}: contents");
        assert_eq!(stats.bytes_written + stats.bytes_zeroed, vsize);
    }
}

#[test]
fn file_in_order_sparse_image_stays_sparse() {
    // 256 MiB virtual, 1 MiB of data at the start and 1 MiB at the end, the
    // rest reported as 64 KiB zero clusters (as a qcow2 decoder would).
    let dir = tempdir();
    let p = dir.path().join("sparse.img");
    let vsize = 256u64 << 20;
    let mut t = Target::open(&p, &TargetOptions::default()).expect("open");
    t.set_virtual_size(vsize).expect("vsize");
    let data = vec![0x5Au8; 1 << 20];
    t.data(0, &data).expect("head");
    let mut off = 1u64 << 20;
    while off < vsize - (1 << 20) {
        t.zero(off, 64 << 10).expect("zero");
        off += 64 << 10;
    }
    t.data(off, &data).expect("tail");
    t.finish().expect("finish");
    assert_eq!(std::fs::metadata(&p).expect("stat").len(), vsize);
    assert!(
        allocated(&p) <= 4 << 20,
        "allocated {} bytes",
        allocated(&p)
    );
    assert_eq!(read_at(&p, vsize - 10, 10), vec![0x5A; 10]);
    assert_eq!(read_at(&p, 100 << 20, 4096), vec![0; 4096]);
}

// ---------- loop devices ----------

#[test]
fn loop_random_order_extents_match_and_nothing_past_vsize_changes() {
    require_loop!("loop_random_order_extents_match_and_nothing_past_vsize_changes");
    for seed in 11..=13u64 {
        let dir = tempdir();
        let backing = dir.path().join("backing.img");
        let dev_size = 8u64 << 20;
        let stale = stale_file(&backing, dev_size, seed);
        let lo = attach(&backing);
        let mut rng = Prng::new(seed);
        // An odd virtual size: the last logical block is shared with stale bytes.
        let vsize = dev_size - (1 + rng.below(4999));
        let mut pieces = layout(&mut rng, vsize);
        let want = expected(&pieces, vsize);
        shuffle(&mut pieces, &mut rng);
        let mut t = Target::open(&lo.dev, &small_opts()).expect("open device");
        assert_eq!(t.kind(), TargetKind::BlockDevice);
        assert_eq!(t.device_size(), Some(dev_size));
        t.set_virtual_size(vsize).expect("vsize");
        feed(&mut t, &pieces).expect("feed");
        t.finish().expect("finish");
        let got = read_at(&lo.dev, 0, dev_size as usize);
        assert_eq!(
            first_diff(&got[..vsize as usize], &want),
            None,
            "seed {seed}"
        );
        assert_eq!(
            first_diff(&got[vsize as usize..], &stale[vsize as usize..]),
            None,
            "seed {seed}: bytes past the virtual size changed"
        );
    }
}

#[test]
fn loop_zero_extents_clear_stale_data_without_allocating() {
    require_loop!("loop_zero_extents_clear_stale_data_without_allocating");
    let dir = tempdir();
    let backing = dir.path().join("backing.img");
    let dev_size = 64u64 << 20;
    // Fully allocated, non-zero stale data.
    stale_file(&backing, dev_size, 7);
    nix::unistd::fsync(File::open(&backing).expect("open")).expect("fsync");
    let lo = attach(&backing);
    let mut t = Target::open(&lo.dev, &TargetOptions::default()).expect("open");
    t.set_virtual_size(dev_size).expect("vsize");
    let data = vec![0xC3u8; 1 << 20];
    t.data(0, &data).expect("data");
    // Zero clusters in host order, with an unaligned piece in the middle.
    let mut off = 1u64 << 20;
    while off < dev_size {
        let len = (64u64 << 10).min(dev_size - off);
        t.zero(off, len).expect("zero");
        off += len;
    }
    let stats = t.finish().expect("finish");
    assert_eq!(stats.bytes_zeroed, dev_size - (1 << 20));
    let got = read_at(&lo.dev, 0, dev_size as usize);
    assert!(got[..1 << 20].iter().all(|&b| b == 0xC3));
    assert_eq!(
        got[1 << 20..].iter().position(|&b| b != 0),
        None,
        "stale data survived"
    );
    drop(lo);
    // Punching deallocated the backing file (BLKZEROOUT alone would have kept it allocated).
    let alloc = allocated(&backing);
    assert!(
        alloc <= 8 << 20,
        "backing file still has {alloc} bytes allocated"
    );
}

#[test]
fn loop_sparse_backing_file_stays_sparse() {
    require_loop!("loop_sparse_backing_file_stays_sparse");
    let dir = tempdir();
    let backing = dir.path().join("sparse-backing.img");
    let dev_size = 1u64 << 30;
    File::create(&backing)
        .and_then(|f| f.set_len(dev_size))
        .expect("sparse backing file");
    let lo = attach(&backing);
    for target_is_zero in [false, true] {
        let opts = TargetOptions {
            target_is_zero,
            ..TargetOptions::default()
        };
        let mut t = Target::open(&lo.dev, &opts).expect("open");
        t.set_virtual_size(dev_size).expect("vsize");
        t.data(4096, &[0x11u8; 512]).expect("data");
        t.zero(0, 4096).expect("zero head");
        t.zero(4608, dev_size - 4608).expect("zero rest");
        t.finish().expect("finish");
        assert_eq!(read_at(&lo.dev, 4000, 700)[96..608], [0x11u8; 512][..]);
        let alloc = allocated(&backing);
        assert!(
            alloc <= 1 << 20,
            "target_is_zero={target_is_zero}: {alloc} bytes allocated"
        );
    }
}

#[test]
fn loop_too_large_is_refused_and_writes_nothing() {
    require_loop!("loop_too_large_is_refused_and_writes_nothing");
    let dir = tempdir();
    let backing = dir.path().join("backing.img");
    let dev_size = 8u64 << 20;
    let stale = stale_file(&backing, dev_size, 3);
    let lo = attach(&backing);
    let mut t = Target::open(&lo.dev, &TargetOptions::default()).expect("open");
    let err = t.set_virtual_size(dev_size + 512).expect_err("too large");
    assert!(
        matches!(err, SinkError::TooLarge { size, available } if size == dev_size + 512 && available == dev_size),
        "{err}"
    );
    // Nothing gets through afterwards either.
    assert!(t.data(0, &[1u8; 4096]).is_err());
    assert!(t.finish().is_err());
    // `available` smaller than the device is the limit too.
    let opts = TargetOptions {
        available: Some(4 << 20),
        ..TargetOptions::default()
    };
    let mut t = Target::open(&lo.dev, &opts).expect("open");
    let err = t.set_virtual_size(5 << 20).expect_err("above available");
    assert!(
        matches!(
            err,
            SinkError::TooLarge {
                available: 4194304,
                ..
            }
        ),
        "{err}"
    );
    drop(t);
    assert_eq!(
        first_diff(&read_at(&lo.dev, 0, dev_size as usize), &stale),
        None
    );
}

#[test]
fn loop_unknown_length_is_bounded_by_the_device() {
    require_loop!("loop_unknown_length_is_bounded_by_the_device");
    let dir = tempdir();
    let backing = dir.path().join("backing.img");
    let dev_size = 4u64 << 20;
    let stale = stale_file(&backing, dev_size, 5);
    let lo = attach(&backing);
    let mut t = Target::open(&lo.dev, &small_opts()).expect("open");
    t.data(0, &[9u8; 1000]).expect("in range");
    let err = t
        .data(dev_size - 100, &[9u8; 200])
        .expect_err("past the end");
    assert!(err.to_string().contains("end of the block device"), "{err}");
    assert!(t.finish().is_err(), "finish reports the earlier failure");
    // Raw of unknown length that fits: only the covered bytes change.
    let mut t = Target::open(&lo.dev, &small_opts()).expect("open");
    t.data(0, &[9u8; 1000]).expect("data");
    t.finish().expect("finish");
    let got = read_at(&lo.dev, 0, dev_size as usize);
    assert!(got[..1000].iter().all(|&b| b == 9));
    assert_eq!(first_diff(&got[1000..], &stale[1000..]), None);
}

// ---------- buffered fallback and failures ----------

#[test]
fn no_odirect_filesystem_uses_buffered_writes() {
    let dir = tempdir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    // ramfs refuses O_DIRECT (tmpfs accepts it since Linux 6.6).
    let (_mount, base, must_fall_back) = if is_root() {
        match Mount::new("ramfs", "mode=0755", &mnt) {
            Ok(m) => (Some(m), mnt.clone(), true),
            Err(e) => {
                println!("ramfs unavailable ({e}); using /dev/shm");
                (None, PathBuf::from("/dev/shm"), false)
            }
        }
    } else {
        println!("not root: using /dev/shm, which may accept O_DIRECT");
        (None, PathBuf::from("/dev/shm"), false)
    };
    let sub = tempfile::tempdir_in(&base).expect("tempdir on the test filesystem");
    let p = sub.path().join("disk.img");
    let mut rng = Prng::new(21);
    let vsize = (6u64 << 20) + 333;
    let mut pieces = layout(&mut rng, vsize);
    let want = expected(&pieces, vsize);
    shuffle(&mut pieces, &mut rng);
    let mut t = Target::open(&p, &small_opts()).expect("open");
    t.set_virtual_size(vsize).expect("vsize");
    feed(&mut t, &pieces).expect("feed");
    let stats = t.finish().expect("finish");
    if must_fall_back {
        assert!(!stats.direct_io, "ramfs must use the buffered fallback");
    }
    let got = std::fs::read(&p).expect("read");
    assert_eq!(got.len() as u64, vsize);
    assert_eq!(first_diff(&got, &want), None);
}

#[test]
fn full_filesystem_error_is_surfaced() {
    if !is_root() {
        println!("skipped full_filesystem_error_is_surfaced: not root (needs a tiny tmpfs)");
        return;
    }
    let dir = tempdir();
    let _m = Mount::new("tmpfs", "size=1m", dir.path()).expect("mount tmpfs");
    let p = dir.path().join("disk.img");
    let mut t = Target::open(&p, &small_opts()).expect("open");
    t.set_virtual_size(8 << 20).expect("a sparse size fits");
    let data = vec![0x77u8; 1 << 20];
    let mut fed = Ok(());
    for i in 0..8u64 {
        fed = t.data(i << 20, &data);
        if fed.is_err() {
            break;
        }
    }
    let finished = t.finish();
    println!("feeding: {fed:?}; finish: {:?}", finished.as_ref().err());
    // The failure may surface while feeding or only at finish, but finish
    // always reports it.
    let e = finished.expect_err("a full filesystem reported success");
    {
        let msg = e.to_string();
        assert!(msg.contains("disk.img"), "{msg}");
    }
}

#[test]
fn failing_block_device_error_is_surfaced() {
    require_loop!("failing_block_device_error_is_surfaced");
    // A loop device claiming 16 MiB over a sparse file on a 2 MiB tmpfs:
    // writes fail once the backing filesystem is full.
    let dir = tempdir();
    let _m = Mount::new("tmpfs", "size=2m", dir.path()).expect("mount tmpfs");
    let backing = dir.path().join("backing.img");
    File::create(&backing)
        .and_then(|f| f.set_len(16 << 20))
        .expect("sparse backing");
    let lo = attach(&backing);
    let mut t = Target::open(&lo.dev, &TargetOptions::default()).expect("open");
    t.set_virtual_size(16 << 20).expect("fits the claimed size");
    let data = vec![0x42u8; 1 << 20];
    let mut fed = Ok(());
    for i in 0..16u64 {
        fed = t.data(i << 20, &data);
        if fed.is_err() {
            break;
        }
    }
    let finished = t.finish();
    println!("feeding: {fed:?}; finish: {:?}", finished.as_ref().err());
    assert!(fed.is_err(), "16 MiB cannot fit a 2 MiB backing filesystem");
    assert!(finished.is_err(), "finish must report the earlier failure");
    drop(lo);
}

#[test]
fn directory_target_is_refused() {
    let dir = tempdir();
    let err = Target::open(dir.path(), &TargetOptions::default())
        .err()
        .expect("a directory is not a target");
    let msg = streamdisk::error_chain(&err);
    assert!(
        msg.contains("not a block device or a regular file"),
        "{msg}"
    );
    // A path in a missing directory fails with the path in the message.
    let missing = dir.path().join("no/such/dir/disk.img");
    let err = Target::open(&missing, &TargetOptions::default())
        .err()
        .expect("fails");
    assert!(err.to_string().contains("no/such/dir/disk.img"), "{err}");
}

// ---------- raw decoder into real targets ----------

/// A raw image with data, long zero runs, a lone non-zero byte and an odd size.
fn raw_image(seed: u64) -> Vec<u8> {
    let mut rng = Prng::new(seed);
    let mut img = vec![0u8; (5 << 20) + 4321];
    rng.fill(&mut img[..300_000]);
    rng.fill(&mut img[(3 << 20)..(3 << 20) + 70_000]);
    img[(4 << 20) + 17] = 1;
    let n = img.len();
    rng.fill(&mut img[n - 100..]);
    img
}

fn sector_padded(n: usize) -> usize {
    n.div_ceil(512) * 512
}

#[test]
fn raw_stream_into_a_file_with_and_without_size() {
    let img = raw_image(31);
    for hint in [Some(img.len() as u64), None] {
        let dir = tempdir();
        let p = dir.path().join("raw.img");
        stale_file(&p, 8 << 20, 32);
        let mut t = Target::open(&p, &TargetOptions::default()).expect("open");
        let rep = streamdisk::format::raw::decode(&mut &img[..], hint, &mut t).expect("decode");
        assert_eq!(rep.bytes_read, img.len() as u64);
        assert!(rep.zero_bytes > 4 << 20, "zero runs detected");
        t.finish().expect("finish");
        let got = std::fs::read(&p).expect("read");
        // Raw images are rounded up to whole 512-byte sectors, as qemu does.
        assert_eq!(got.len(), sector_padded(img.len()), "hint {hint:?}");
        assert_eq!(first_diff(&got[..img.len()], &img), None, "hint {hint:?}");
        assert!(got[img.len()..].iter().all(|&b| b == 0), "hint {hint:?}");
    }
}

#[test]
fn raw_stream_into_a_loop_device_over_stale_data() {
    require_loop!("raw_stream_into_a_loop_device_over_stale_data");
    let img = raw_image(33);
    let dir = tempdir();
    let backing = dir.path().join("backing.img");
    let stale = stale_file(&backing, 6 << 20, 34);
    let lo = attach(&backing);
    let mut t = Target::open(&lo.dev, &TargetOptions::default()).expect("open");
    streamdisk::format::raw::decode(&mut &img[..], Some(img.len() as u64), &mut t).expect("decode");
    t.finish().expect("finish");
    let got = read_at(&lo.dev, 0, 6 << 20);
    let padded = sector_padded(img.len());
    assert_eq!(first_diff(&got[..img.len()], &img), None);
    assert!(got[img.len()..padded].iter().all(|&b| b == 0));
    assert_eq!(first_diff(&got[padded..], &stale[padded..]), None);
}

// ---------- 4 KiB logical blocks and the CDI helpers on devices ----------

#[test]
fn loop_with_4k_sectors_takes_512_byte_pieces() {
    require_loop!("loop_with_4k_sectors_takes_512_byte_pieces");
    let dir = tempdir();
    let backing = dir.path().join("backing.img");
    let dev_size = 8u64 << 20;
    let stale = stale_file(&backing, dev_size, 41);
    let lo = match LoopDevice::attach_with(&backing, &["--sector-size", "4096"]) {
        Some(lo) => lo,
        None => {
            println!("skipped loop_with_4k_sectors_takes_512_byte_pieces: losetup --sector-size unsupported");
            return;
        }
    };
    let mut t = Target::open(&lo.dev, &small_opts()).expect("open");
    assert_eq!(t.alignment(), 4096);
    let mut rng = Prng::new(42);
    // A qcow2 with 512-byte clusters: the virtual size is a multiple of 512 only.
    let vsize = dev_size - 1536;
    let mut pieces = layout(&mut rng, vsize);
    let want = expected(&pieces, vsize);
    shuffle(&mut pieces, &mut rng);
    t.set_virtual_size(vsize).expect("vsize");
    feed(&mut t, &pieces).expect("feed");
    let stats = t.finish().expect("finish");
    assert!(stats.partial_merges > 0);
    let got = read_at(&lo.dev, 0, dev_size as usize);
    assert_eq!(first_diff(&got[..vsize as usize], &want), None);
    assert_eq!(
        first_diff(&got[vsize as usize..], &stale[vsize as usize..]),
        None
    );
}

#[test]
fn loop_write_zeros_direct_and_wipe_edges() {
    require_loop!("loop_write_zeros_direct_and_wipe_edges");
    let dir = tempdir();
    let backing = dir.path().join("backing.img");
    let dev_size = 6u64 << 20;
    let stale = stale_file(&backing, dev_size, 43);
    let lo = attach(&backing);
    assert_eq!(
        streamdisk::target::block_device_size(&lo.dev).expect("size"),
        dev_size
    );
    // Preallocation of a blank disk smaller than the device, ending mid-sector.
    let len = (3 << 20) + 700;
    streamdisk::target::write_zeros_direct(&lo.dev, len).expect("zeros");
    let got = read_at(&lo.dev, 0, dev_size as usize);
    assert_eq!(got[..len as usize].iter().position(|&b| b != 0), None);
    assert_eq!(
        first_diff(&got[len as usize..], &stale[len as usize..]),
        None
    );
    // Too large for the device: refused with the CDI message.
    let err =
        streamdisk::target::write_zeros_direct(&lo.dev, dev_size + 512).expect_err("too large");
    assert!(matches!(err, TargetError::TooLarge { .. }), "{err}");

    // Wipe: fill with data again, then only the edges become zeros.
    std::fs::write(&lo.dev, &stale).expect("refill");
    streamdisk::target::wipe_edges(&lo.dev).expect("wipe");
    let got = read_at(&lo.dev, 0, dev_size as usize);
    let mib = 1usize << 20;
    assert_eq!(got[..mib].iter().position(|&b| b != 0), None);
    assert_eq!(
        got[dev_size as usize - mib..].iter().position(|&b| b != 0),
        None
    );
    assert_eq!(
        first_diff(
            &got[mib..dev_size as usize - mib],
            &stale[mib..dev_size as usize - mib]
        ),
        None
    );
}

// ---------- huge sparse images ----------

#[test]
fn one_tib_sparse_image_on_a_loop_device_allocates_only_its_data() {
    require_loop!("one_tib_sparse_image_on_a_loop_device_allocates_only_its_data");
    let dir = tempdir();
    let backing = dir.path().join("huge.img");
    let vsize = 1u64 << 40;
    if File::create(&backing)
        .and_then(|f| f.set_len(vsize))
        .is_err()
    {
        println!("skipped one_tib_sparse_image...: the filesystem cannot hold a 1 TiB sparse file");
        return;
    }
    let lo = attach(&backing);
    let mut t = Target::open(&lo.dev, &TargetOptions::default()).expect("open");
    t.set_virtual_size(vsize).expect("vsize");
    let data = vec![0x3Cu8; 4 << 20];
    // Data at both ends, zeros reported in 4 MiB pieces in between (262144 calls).
    t.data(0, &data).expect("head");
    let piece = 4u64 << 20;
    let mut off = piece;
    while off < vsize - piece {
        t.zero(off, piece).expect("zero");
        off += piece;
    }
    t.data(off, &data).expect("tail");
    let stats = t.finish().expect("finish");
    assert_eq!(stats.bytes_zeroed, vsize - 2 * piece);
    assert_eq!(read_at(&lo.dev, vsize - 16, 16), vec![0x3C; 16]);
    assert_eq!(read_at(&lo.dev, vsize / 2, 4096), vec![0; 4096]);
    drop(lo);
    let alloc = allocated(&backing);
    assert!(
        alloc <= 64 << 20,
        "{alloc} bytes allocated for 8 MiB of data"
    );
}
