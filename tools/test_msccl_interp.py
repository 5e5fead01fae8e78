"""Self-test for msccl_interp.py with small hand-written MSCCL algorithms.

Run from the repository root:  python3 -m unittest tools/test_msccl_interp.py -v

The XML below is written by hand (not by the exporter under test), so these
tests pin down the interpreter's own reading of the format.
"""

import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msccl_interp as mi  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "msccl_interp.py")
NODEP = 'depid="-1" deps="-1" hasdep="0"'

# 2 gpus, 2 chunks: each gpu reduces one chunk (rrc) and sends the sum back.
ALLREDUCE_2 = f"""<algo name="ar2" proto="Simple" nchannels="1" nchunksperloop="2" ngpus="2" coll="allreduce" inplace="0">
  <gpu id="0" i_chunks="2" o_chunks="2" s_chunks="0">
    <tb id="0" send="1" recv="1" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="1" dstbuf="o" dstoff="1" cnt="1" {NODEP}/>
      <step s="1" type="rrc" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="2" type="s" srcbuf="o" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="3" type="r" srcbuf="o" srcoff="1" dstbuf="o" dstoff="1" cnt="1" {NODEP}/>
    </tb>
  </gpu>
  <gpu id="1" i_chunks="2" o_chunks="2" s_chunks="0">
    <tb id="0" send="0" recv="0" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="rrc" srcbuf="i" srcoff="1" dstbuf="o" dstoff="1" cnt="1" {NODEP}/>
      <step s="2" type="s" srcbuf="o" srcoff="1" dstbuf="o" dstoff="1" cnt="1" {NODEP}/>
      <step s="3" type="r" srcbuf="o" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
    </tb>
  </gpu>
</algo>
"""

# The same algorithm written in place, as msccl-tools does: only the input buffer is named.
ALLREDUCE_2_INPLACE = f"""<algo name="ar2ip" proto="Simple" nchannels="1" nchunksperloop="2" ngpus="2" coll="allreduce" inplace="1">
  <gpu id="0" i_chunks="2" o_chunks="0" s_chunks="0">
    <tb id="0" send="1" recv="1" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="1" dstbuf="i" dstoff="1" cnt="1" {NODEP}/>
      <step s="1" type="rrc" srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" {NODEP}/>
      <step s="2" type="s" srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" {NODEP}/>
      <step s="3" type="r" srcbuf="i" srcoff="1" dstbuf="i" dstoff="1" cnt="1" {NODEP}/>
    </tb>
  </gpu>
  <gpu id="1" i_chunks="2" o_chunks="0" s_chunks="0">
    <tb id="0" send="0" recv="0" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="rrc" srcbuf="i" srcoff="1" dstbuf="i" dstoff="1" cnt="1" {NODEP}/>
      <step s="2" type="s" srcbuf="i" srcoff="1" dstbuf="i" dstoff="1" cnt="1" {NODEP}/>
      <step s="3" type="r" srcbuf="i" srcoff="0" dstbuf="i" dstoff="0" cnt="1" {NODEP}/>
    </tb>
  </gpu>
</algo>
"""

# 3-gpu ring allgather.  Per gpu g: tb0 sends to g+1 (own chunk, then forwards
# the chunk of g-1 once tb1 has received it: depid=1 deps=0), tb1 receives
# from g-1, tb2 copies the own chunk into place.
ALLGATHER_RING_3 = f"""<algo name="ag3" proto="Simple" nchannels="1" nchunksperloop="3" ngpus="3" coll="allgather" inplace="0">
  <gpu id="0" i_chunks="1" o_chunks="3" s_chunks="0">
    <tb id="0" send="1" recv="-1" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="s" srcbuf="o" srcoff="2" dstbuf="o" dstoff="2" cnt="1" depid="1" deps="0" hasdep="0"/>
    </tb>
    <tb id="1" send="-1" recv="2" chan="0">
      <step s="0" type="r" srcbuf="i" srcoff="0" dstbuf="o" dstoff="2" cnt="1" depid="-1" deps="-1" hasdep="1"/>
      <step s="1" type="r" srcbuf="o" srcoff="1" dstbuf="o" dstoff="1" cnt="1" {NODEP}/>
    </tb>
    <tb id="2" send="-1" recv="-1" chan="0">
      <step s="0" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
    </tb>
  </gpu>
  <gpu id="1" i_chunks="1" o_chunks="3" s_chunks="0">
    <tb id="0" send="2" recv="-1" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="1" cnt="1" {NODEP}/>
      <step s="1" type="s" srcbuf="o" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="1" deps="0" hasdep="0"/>
    </tb>
    <tb id="1" send="-1" recv="0" chan="0">
      <step s="0" type="r" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="1"/>
      <step s="1" type="r" srcbuf="o" srcoff="2" dstbuf="o" dstoff="2" cnt="1" {NODEP}/>
    </tb>
    <tb id="2" send="-1" recv="-1" chan="0">
      <step s="0" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="1" cnt="1" {NODEP}/>
    </tb>
  </gpu>
  <gpu id="2" i_chunks="1" o_chunks="3" s_chunks="0">
    <tb id="0" send="0" recv="-1" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="2" cnt="1" {NODEP}/>
      <step s="1" type="s" srcbuf="o" srcoff="1" dstbuf="o" dstoff="1" cnt="1" depid="1" deps="0" hasdep="0"/>
    </tb>
    <tb id="1" send="-1" recv="1" chan="0">
      <step s="0" type="r" srcbuf="i" srcoff="0" dstbuf="o" dstoff="1" cnt="1" depid="-1" deps="-1" hasdep="1"/>
      <step s="1" type="r" srcbuf="o" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
    </tb>
    <tb id="2" send="-1" recv="-1" chan="0">
      <step s="0" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="2" cnt="1" {NODEP}/>
    </tb>
  </gpu>
</algo>
"""

# 2-gpu reduce_scatter: gpu g ends with sum over gpus of input chunk g.
REDUCE_SCATTER_2 = f"""<algo name="rs2" proto="LL" nchannels="1" nchunksperloop="2" ngpus="2" coll="reducescatter" inplace="0">
  <gpu id="0" i_chunks="2" o_chunks="1" s_chunks="0">
    <tb id="0" send="1" recv="1" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="1" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="rrc" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
    </tb>
  </gpu>
  <gpu id="1" i_chunks="2" o_chunks="1" s_chunks="0">
    <tb id="0" send="0" recv="0" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="rrc" srcbuf="i" srcoff="1" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
    </tb>
  </gpu>
</algo>
"""

# 2-gpu alltoall through a scratch chunk: output[g][k] = input[k][g].
ALLTOALL_2 = f"""<algo name="a2a2" proto="Simple" nchannels="1" nchunksperloop="2" ngpus="2" coll="alltoall" inplace="0">
  <gpu id="0" i_chunks="2" o_chunks="2" s_chunks="1">
    <tb id="0" send="1" recv="1" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="1" dstbuf="s" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="r" srcbuf="i" srcoff="0" dstbuf="s" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="1"/>
    </tb>
    <tb id="1" send="-1" recv="-1" chan="0">
      <step s="0" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="cpy" srcbuf="s" srcoff="0" dstbuf="o" dstoff="1" cnt="1" depid="0" deps="1" hasdep="0"/>
    </tb>
  </gpu>
  <gpu id="1" i_chunks="2" o_chunks="2" s_chunks="1">
    <tb id="0" send="0" recv="0" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="s" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="r" srcbuf="i" srcoff="1" dstbuf="s" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="1"/>
    </tb>
    <tb id="1" send="-1" recv="-1" chan="0">
      <step s="0" type="cpy" srcbuf="i" srcoff="1" dstbuf="o" dstoff="1" cnt="1" {NODEP}/>
      <step s="1" type="cpy" srcbuf="s" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="0" deps="1" hasdep="0"/>
    </tb>
  </gpu>
</algo>
"""

# Both gpus receive before they send: nobody can make progress.
DEADLOCK_2 = f"""<algo name="dl" proto="Simple" nchannels="1" nchunksperloop="1" ngpus="2" coll="allreduce" inplace="0">
  <gpu id="0" i_chunks="1" o_chunks="1" s_chunks="0">
    <tb id="0" send="1" recv="1" chan="0">
      <step s="0" type="rrc" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
    </tb>
  </gpu>
  <gpu id="1" i_chunks="1" o_chunks="1" s_chunks="0">
    <tb id="0" send="0" recv="0" chan="0">
      <step s="0" type="rrc" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
      <step s="1" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>
    </tb>
  </gpu>
</algo>
"""


def check(text, **kwargs):
    return mi.check_text(text, **kwargs)


def swap(text, old, new, count=1):
    """Derive a broken variant; insist the edit actually happened."""
    assert text.count(old) >= count, old
    return text.replace(old, new, count)


class CorrectAlgorithms(unittest.TestCase):
    def test_allreduce_2gpu(self):
        line = check(ALLREDUCE_2, trials=20)
        self.assertEqual(line, "ok: allreduce, 2 gpus, 2 tbs, 8 steps, 20 trials (out-of-place)")

    def test_allreduce_in_place(self):
        self.assertIn("(in-place)", check(ALLREDUCE_2_INPLACE))

    def test_in_place_program_fails_out_of_place(self):
        # Run out of place it never writes the output buffer.
        with self.assertRaisesRegex(mi.AlgoError, r"wrong result: gpu 0 output chunk 0 .*uninitialised g0\.o\[0\]"):
            check(ALLREDUCE_2_INPLACE, placement="out")

    def test_outofplace_attribute_adds_a_placement(self):
        text = swap(ALLREDUCE_2_INPLACE, 'inplace="1"', 'inplace="1" outofplace="1"')
        with self.assertRaisesRegex(mi.AlgoError, "out-of-place"):
            check(text)

    def test_allgather_ring_3gpu(self):
        self.assertEqual(check(ALLGATHER_RING_3, trials=30),
                         "ok: allgather, 3 gpus, 9 tbs, 15 steps, 30 trials (out-of-place)")

    def test_allgather_ring_in_place_and_one_slot(self):
        # In place the input is output[g]; the copy step then copies a chunk onto itself.
        self.assertIn("ok:", check(ALLGATHER_RING_3, placement="in", slots=1))

    def test_reduce_scatter_both_placements(self):
        for placement in ("in", "out"):
            self.assertIn("ok: reducescatter", check(REDUCE_SCATTER_2, placement=placement))

    def test_alltoall_via_scratch(self):
        self.assertIn("ok: alltoall", check(ALLTOALL_2, trials=20))


class BrokenAlgorithms(unittest.TestCase):
    def test_missing_dependency_is_caught_by_random_schedules(self):
        # Without depid the forwarding send may run before the chunk arrived.
        racy = ALLGATHER_RING_3.replace('depid="1" deps="0"', 'depid="-1" deps="-1"')
        self.assertNotEqual(racy, ALLGATHER_RING_3)
        with self.assertRaisesRegex(mi.AlgoError, r"wrong result: .*uninitialised .*\[trial seed \d+"):
            check(racy, trials=20, seed=0)

    def test_missing_dependency_in_alltoall(self):
        racy = ALLTOALL_2.replace('depid="0" deps="1"', 'depid="-1" deps="-1"')
        with self.assertRaisesRegex(mi.AlgoError, "wrong result"):
            check(racy, trials=20, seed=0)

    def test_deadlock(self):
        with self.assertRaisesRegex(mi.AlgoError, r"^deadlock: gpu 0 tb 0 step 0 \(rrc\) waits for a message "
                                                  r"from gpu 1 on channel 0; gpu 1 tb 0 step 0"):
            check(DEADLOCK_2)

    def test_size_mismatch(self):
        text = swap(ALLREDUCE_2, 'srcoff="1" dstbuf="o" dstoff="1" cnt="1"', 'srcoff="0" dstbuf="o" dstoff="1" cnt="2"')
        with self.assertRaisesRegex(mi.AlgoError, r"gpu 1 tb 0 step 1 \(rrc\): receives cnt=1, but the next "
                                                  r"message from gpu 0 on channel 0 has cnt=2"):
            check(text)

    def test_dependency_on_step_without_hasdep(self):
        text = swap(ALLGATHER_RING_3, 'depid="-1" deps="-1" hasdep="1"', NODEP)
        with self.assertRaisesRegex(mi.AlgoError, r'gpu 0 tb 0 step 1 \(s\): depends on tb 1 step 0 \(r\), '
                                                  r'which does not have hasdep="1"'):
            check(text)

    def test_message_never_received(self):
        extra = f'<step s="4" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" {NODEP}/>\n    </tb>'
        text = swap(ALLREDUCE_2, "</tb>", extra)
        with self.assertRaisesRegex(mi.AlgoError, "message from gpu 0 to gpu 1 channel 0 never received"):
            check(text)

    def test_send_to_self(self):
        with self.assertRaisesRegex(mi.AlgoError, "gpu 0 tb 0: send peer is the gpu itself"):
            check(swap(ALLREDUCE_2, 'send="1" recv="1"', 'send="0" recv="1"'))

    def test_two_owners_of_one_connection_side(self):
        text = swap(ALLGATHER_RING_3, '<tb id="2" send="-1" recv="-1"', '<tb id="2" send="1" recv="-1"')
        with self.assertRaisesRegex(mi.AlgoError, "tb 0 already owns the sending side of gpu 0 -> gpu 1"):
            check(text)

    def test_out_of_bounds(self):
        text = swap(ALLREDUCE_2, 'type="s" srcbuf="i" srcoff="1"', 'type="s" srcbuf="i" srcoff="2"')
        with self.assertRaisesRegex(mi.AlgoError, r"gpu 0 tb 0 step 0 \(s\): src i\[2:3\] is outside"):
            check(text)

    def test_too_many_steps(self):
        nops = "".join(f'<step s="{k}" type="nop" srcbuf="i" srcoff="-1" dstbuf="o" dstoff="-1" cnt="0" {NODEP}/>'
                       for k in range(mi.MSCCL_MAX_NUM_STEPS + 1))
        text = swap(ALLREDUCE_2, '<tb id="0" send="1" recv="1" chan="0">',
                    f'<tb id="0" send="1" recv="1" chan="0">{nops}</tb><tb id="1" send="-1" recv="-1" chan="0">')
        with self.assertRaisesRegex(mi.AlgoError, "257 steps; MSCCL allows at most 256"):
            check(text)

    def test_tb_ids_in_order(self):
        with self.assertRaisesRegex(mi.AlgoError, "tb ids must be 0..n-1"):
            check(swap(ALLGATHER_RING_3, '<tb id="1"', '<tb id="5"'))

    def test_nop_dependency_must_be_followed_by_a_dependent_step(self):
        # msccl-executor-nccl attaches a nop's dependency to the next real step
        # and refuses the file when that step has none of its own.
        text = swap(ALLGATHER_RING_3,
                    f'<step s="1" type="s" srcbuf="o" srcoff="2" dstbuf="o" dstoff="2" cnt="1" depid="1" deps="0" hasdep="0"/>',
                    f'<step s="1" type="nop" srcbuf="i" srcoff="-1" dstbuf="o" dstoff="-1" cnt="0" depid="1" deps="0" hasdep="0"/>'
                    f'<step s="2" type="s" srcbuf="o" srcoff="2" dstbuf="o" dstoff="2" cnt="1" {NODEP}/>')
        with self.assertRaisesRegex(mi.AlgoError, r"gpu 0 tb 0 step 2 \(s\): follows nop step 1"):
            check(text)

    def test_nop_carrying_extra_dependency_is_fine(self):
        # Two dependencies, msccl-tools style: a nop for the extra one, then the real step.
        text = swap(ALLGATHER_RING_3, '<step s="0" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>',
                    '<step s="0" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="1"/>')
        text = swap(text,
                    '<step s="1" type="s" srcbuf="o" srcoff="2" dstbuf="o" dstoff="2" cnt="1" depid="1" deps="0" hasdep="0"/>',
                    '<step s="1" type="nop" srcbuf="i" srcoff="-1" dstbuf="o" dstoff="-1" cnt="0" depid="2" deps="0" hasdep="0"/>'
                    '<step s="2" type="s" srcbuf="o" srcoff="2" dstbuf="o" dstoff="2" cnt="1" depid="1" deps="0" hasdep="0"/>')
        self.assertIn("ok:", check(text))

    def test_depless_nop_shifts_executor_step_numbers(self):
        text = swap(ALLGATHER_RING_3,
                    '<tb id="1" send="-1" recv="2" chan="0">\n      <step s="0" type="r" srcbuf="i" srcoff="0" dstbuf="o" dstoff="2" cnt="1" depid="-1" deps="-1" hasdep="1"/>\n      <step s="1" type="r"',
                    f'<tb id="1" send="-1" recv="2" chan="0">\n      <step s="0" type="nop" srcbuf="i" srcoff="-1" dstbuf="o" dstoff="-1" cnt="0" {NODEP}/>'
                    '<step s="1" type="r" srcbuf="i" srcoff="0" dstbuf="o" dstoff="2" cnt="1" depid="-1" deps="-1" hasdep="1"/><step s="2" type="r"')
        text = swap(text, 'depid="1" deps="0"', 'depid="1" deps="1"')
        with self.assertRaisesRegex(mi.AlgoError, r"signals that step as step 0"):
            check(text)

    def test_bad_nchunksperloop(self):
        with self.assertRaisesRegex(mi.AlgoError, "gpu 0: i_chunks=2 exceeds the 1 chunks"):
            check(swap(ALLREDUCE_2, 'nchunksperloop="2"', 'nchunksperloop="1"'))
        with self.assertRaisesRegex(mi.AlgoError, "not a multiple of ngpus=3"):
            check(swap(ALLGATHER_RING_3, 'nchunksperloop="3"', 'nchunksperloop="2"'))
        with self.assertRaisesRegex(mi.AlgoError, "wrong result: gpu 0 output chunk 2"):
            check(swap(ALLREDUCE_2, 'nchunksperloop="2"', 'nchunksperloop="3"'))


class FormatAndCli(unittest.TestCase):
    def run_cli(self, *args, stdin=None):
        return subprocess.run([sys.executable, SCRIPT, *args], input=stdin, capture_output=True, text=True)

    def test_missing_attribute_is_a_format_error(self):
        with self.assertRaisesRegex(mi.FormatError, "missing attribute 'cnt'"):
            check(swap(ALLREDUCE_2, ' cnt="1"', ""))

    def test_cli_ok_from_stdin(self):
        proc = self.run_cli("-", "--trials", "3", "--seed", "7", "--verbose", stdin=ALLGATHER_RING_3)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertTrue(proc.stdout.endswith("ok: allgather, 3 gpus, 9 tbs, 15 steps, 3 trials (out-of-place)\n"))
        self.assertEqual(proc.stdout.count("max FIFO depth"), 3)

    def test_cli_failure_is_one_line_exit_1(self):
        proc = self.run_cli("-", stdin=DEADLOCK_2)
        self.assertEqual(proc.returncode, 1)
        self.assertRegex(proc.stderr, r"^error: deadlock: [^\n]*\n$")

    def test_cli_malformed_exit_2(self):
        proc = self.run_cli("-", stdin="<algo><gpu>")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("not well-formed", proc.stderr)
        self.assertEqual(self.run_cli("-", "--placement", "sideways", stdin=ALLREDUCE_2).returncode, 2)

    def test_strict_mode(self):
        full = swap(ALLREDUCE_2, 'inplace="0"', 'inplace="0" outofplace="1" minBytes="0" maxBytes="0"')
        self.assertIn("ok:", check(full, strict=True))
        with self.assertRaisesRegex(mi.AlgoError, "lacks attribute 'minBytes'"):
            check(ALLREDUCE_2, strict=True)
        with self.assertRaisesRegex(mi.AlgoError, "parser cannot read"):
            check('<?xml version="1.0"?>\n' + full, strict=True)
        rs = swap(REDUCE_SCATTER_2, 'coll="reducescatter" inplace="0"',
                  'coll="reduce_scatter" inplace="0" outofplace="1" minBytes="0" maxBytes="0"')
        self.assertIn("ok:", check(rs))
        with self.assertRaisesRegex(mi.AlgoError, "coll='reduce_scatter' is not accepted"):
            check(rs, strict=True)


if __name__ == "__main__":
    unittest.main()
