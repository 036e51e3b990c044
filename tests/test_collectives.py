"""The HLO collectives parser: exact counts and bytes on hand-written HLO and on compiled steps."""

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxdl.models import get_model
from jaxdl.parallel import make_mesh
from jaxdl.parallel.collectives import (
    collective_overlap,
    collective_report,
    data_parallel_minimum_bytes,
    fsdp_minimum_bytes,
    minimum_bytes,
    parse_hlo_module,
    type_bytes,
)
from jaxdl.train.compile import compile_train_step

# Every spelling the parser must understand: three replica-group syntaxes plus empty groups,
# an async all-gather pair, a tuple (combined) all-reduce, a fusion that calls a collective, a
# while loop annotated with known_trip_count (XLA:CPU), one whose count is read off its
# `i < 24` condition (XLA:TPU), one whose count is unknowable, and an uncalled computation.
HLO = """\
HloModule jit_step, is_scheduled=true, num_partitions=8

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%fused (param_0.f: f32[4]) -> f32[4] {
  %param_0.f = f32[4]{0} parameter(0)
  ROOT %ar.f = f32[4]{0} all-reduce(%param_0.f), replica_groups=[1,8]<=[8], to_apply=%add
}

%body (carry: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %carry = (s32[], f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%carry), index=0
  %v = f32[1024]{0} get-tuple-element(%carry), index=1
  %ar = f32[1024]{0} all-reduce(%v), channel_id=1, replica_groups=[1,8]<=[8], to_apply=%add
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[1024]{0}) tuple(%next, %ar)
}

%cond (carry.1: (s32[], f32[1024])) -> pred[] {
  %carry.1 = (s32[], f32[1024]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%carry.1), index=0
  %limit = s32[] constant(24)
  ROOT %lt = pred[]{:T(512)} compare(%i.1, %limit), direction=LT
}

%body.2 (carry.2: (s32[], f32[16])) -> (s32[], f32[16]) {
  %carry.2 = (s32[], f32[16]{0}) parameter(0)
  %i.2 = s32[] get-tuple-element(%carry.2), index=0
  %w = f32[16]{0} get-tuple-element(%carry.2), index=1
  %ag = f32[32]{0} all-gather(%w), replica_groups=[4,2]<=[8], dimensions={0}
  %sl = f32[16]{0} slice(%ag), slice={[0:16]}
  ROOT %out.2 = (s32[], f32[16]{0}) tuple(%i.2, %sl)
}

%cond.2 (carry.3: (s32[], f32[16])) -> pred[] {
  %carry.3 = (s32[], f32[16]{0}) parameter(0)
  ROOT %t = pred[] constant(true)
}

%body.3 (carry.4: (s32[], f32[8])) -> (s32[], f32[8]) {
  %carry.4 = (s32[], f32[8]{0}) parameter(0)
  %u = f32[8]{0} get-tuple-element(%carry.4), index=1
  %cp.3 = f32[8]{0} collective-permute(%u), source_target_pairs={{0,1},{1,0}}
  %j = s32[] get-tuple-element(%carry.4), index=0
  ROOT %out.3 = (s32[], f32[8]{0}) tuple(%j, %cp.3)
}

%cond.3 (carry.5: (s32[], f32[8])) -> pred[] {
  %carry.5 = (s32[], f32[8]{0}) parameter(0)
  %j.1 = s32[] get-tuple-element(%carry.5), index=0
  %k = s32[] get-tuple-element(%carry.5), index=0
  ROOT %lt.3 = pred[] compare(%j.1, %k), direction=LT
}

%dead (d: f32[4096]) -> f32[4096] {
  %d = f32[4096]{0} parameter(0)
  ROOT %ar.dead = f32[4096]{0} all-reduce(%d), replica_groups={}, to_apply=%add
}

ENTRY %main (p0: bf16[128,64], p1: f32[1024], p2: f32[10], p3: f32[30]) -> f32[1024] {
  %p0 = bf16[128,64]{1,0} parameter(0)
  %p1 = f32[1024]{0} parameter(1)
  %p2 = f32[10]{0} parameter(2)
  %p3 = f32[30]{0} parameter(3)
  %ags = (bf16[128,64]{1,0}, bf16[1024,64]{1,0}) all-gather-start(%p0), channel_id=2, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  %agd = bf16[1024,64]{1,0} all-gather-done(%ags)
  %rs = f32[256]{0} reduce-scatter(%p1), channel_id=3, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
  %a2a = f32[1024]{0} all-to-all(%p1), channel_id=4, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}
  %cp = f32[1024]{0} collective-permute(%p1), channel_id=5, source_target_pairs={{0,1},{1,0}}
  %ar2 = (f32[10]{0}, f32[30]{0}) all-reduce(%p2, %p3), replica_groups={}, to_apply=%add
  %small = f32[4]{0} slice(%p1), slice={[0:4]}
  %fusion = f32[4]{0} fusion(%small), kind=kLoop, calls=%fused, metadata={op_name="jit(step)/body=%dead"}
  %zero = s32[] constant(0)
  %init = (s32[], f32[1024]{0}) tuple(%zero, %p1)
  %loop = (s32[], f32[1024]{0}) while(%init), condition=%cond, body=%body
  %w0 = f32[16]{0} slice(%p1), slice={[0:16]}
  %init.2 = (s32[], f32[16]{0}) tuple(%zero, %w0)
  %loop.2 = (s32[], f32[16]{0}) while(%init.2), condition=%cond.2, body=%body.2, backend_config={"known_trip_count":{"n":"3"}}
  %u0 = f32[8]{0} slice(%p1), slice={[0:8]}
  %init.3 = (s32[], f32[8]{0}) tuple(%zero, %u0)
  %loop.3 = (s32[], f32[8]{0}) while(%init.3), condition=%cond.3, body=%body.3
  ROOT %res = f32[1024]{0} get-tuple-element(%loop), index=1
}
"""  # noqa: E501 - HLO instructions are one line each


def test_type_bytes_of_arrays_tuples_and_narrow_types():
    assert type_bytes("f32[8,128]{1,0:T(8,128)}") == 8 * 128 * 4
    assert type_bytes("(bf16[4]{0}, pred[2], s8[3], token[])") == 4 * 2 + 2 + 3
    assert type_bytes("f32[]") == 4


def test_hand_written_hlo_counts_and_ring_bytes_per_kind():
    report = collective_report(HLO)
    kinds = report.by_kind
    # all-reduce: 24 loop trips x 2*7/8*4096 B, the combined tuple (empty groups -> the
    # header's 8 partitions) 2*7/8*160 B, the fused one 2*7/8*16 B; the uncalled one nothing.
    assert kinds["all-reduce"].count == 26
    assert kinds["all-reduce"].bytes == pytest.approx(24 * 7168 + 280 + 28)
    # all-gather: async pair once (7 x 16 KiB shard); loop body x3 with groups of 2 (1 x 64 B).
    assert kinds["all-gather"].count == 4
    assert kinds["all-gather"].bytes == pytest.approx(7 * 16384 + 3 * 64)
    assert kinds["reduce-scatter"].count == 1
    assert kinds["reduce-scatter"].bytes == pytest.approx(3 / 4 * 4096)
    assert kinds["all-to-all"].count == 1
    assert kinds["all-to-all"].bytes == pytest.approx(3 / 4 * 4096)
    # collective-permute sends its operand; the loop of unknown trip count is counted once.
    assert kinds["collective-permute"].count == 2
    assert kinds["collective-permute"].bytes == pytest.approx(4096 + 32)
    assert report.unknown_trip_count_loops == 1
    assert report.total_bytes == pytest.approx(sum(k.bytes for k in kinds.values()))


def test_parser_rejects_text_without_an_entry_computation_or_with_undefined_operands():
    with pytest.raises(ValueError, match="ENTRY"):
        parse_hlo_module("HloModule m\n")
    undefined = "ENTRY %m (p: f32[4]) -> f32[4] {\n  ROOT %r = f32[4]{0} all-reduce(%q)\n}\n"
    with pytest.raises(ValueError, match="%q of r is never defined"):
        collective_report(undefined)


def test_theoretical_minimums_follow_the_ring_formulas():
    assert data_parallel_minimum_bytes(800, 8) == pytest.approx(2 * 7 / 8 * 800)
    assert fsdp_minimum_bytes(800, 8) == pytest.approx(3 * 7 / 8 * 800)
    # HSDP data=2 x fsdp=4: gather/scatter 3*3/4*800, then all-reduce the 1/4 shard over 2.
    assert minimum_bytes(800, {"data": 2, "fsdp": 4}) == pytest.approx(1800 + 200)
    assert minimum_bytes(800, {"data": 1, "fsdp": 1, "tensor": 1}) == 0


def _compile(model, sizes, batch=16):
    mesh = make_mesh(sizes, jax.devices()[:8])
    example = jax.ShapeDtypeStruct((28, 28, 1), jnp.float32)
    return compile_train_step(model, optax.adam(1e-3), mesh, batch, example)


def test_data_parallel_step_all_reduces_the_gradients_once():
    # LeNet-5 has no normalisation layers, so besides the gradients the only cross-device
    # reductions are the loss and accuracy means (8 bytes): the ring-model all-reduce traffic
    # must equal 2*7/8 x gradient bytes up to those few bytes.
    report = _compile(get_model("lenet5", num_classes=10), {"data": 8})
    expected = data_parallel_minimum_bytes(report.param_bytes, 8)
    assert report.minimum_bytes == pytest.approx(expected)
    assert report.collectives.by_kind["all-reduce"].bytes == pytest.approx(expected, abs=64)
    assert report.collectives.total_bytes == pytest.approx(expected, abs=64)


def test_fsdp_step_gathers_parameters_and_reduces_gradients_across_shards():
    report = _compile(get_model("lenet5", num_classes=10), {"fsdp": 8})
    kinds = report.collectives.by_kind
    shard_fraction = 7 / 8 * report.param_bytes
    # Parameters are all-gathered for the forward (and possibly again for the backward) pass.
    assert kinds["all-gather"].count > 0
    assert 0.5 * shard_fraction < kinds["all-gather"].bytes <= 2 * shard_fraction * 1.01
    # Each gradient is summed across shards once (jaxdl.parallel.gradients): a reduce-scatter,
    # (n-1)/n of its bytes, when fsdp shards it, else an all-reduce, 2(n-1)/n (LeNet's 6- and
    # 84-wide layers do not divide by 8), plus the loss's few bytes.
    assert kinds["reduce-scatter"].bytes >= 0.8 * shard_fraction
    once = kinds["reduce-scatter"].bytes + kinds["all-reduce"].bytes / 2
    assert once == pytest.approx(shard_fraction, abs=64)
    # At least one gather and one reduce-scatter of the parameters: 2/3 of ZeRO-3's minimum,
    # which also re-gathers for the backward pass (kept here: LeNet's kernels are tiny).
    assert report.collectives.total_bytes >= 0.66 * report.minimum_bytes


# A scheduled module with one async all-gather hidden behind a convolution, one whose start
# and done are adjacent, a collective fused with a multiply (XLA:TPU's async collective
# fusion) and a synchronous all-reduce.
SCHEDULED = """\
HloModule jit_step, is_scheduled=true, num_partitions=4

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%fused_collective (p0: f32[64], p1: f32[256]) -> f32[256] {
  %p0 = f32[64]{0} parameter(0)
  %p1 = f32[256]{0} parameter(1)
  %ag.f = f32[256]{0} all-gather(%p0), replica_groups=[1,4]<=[4], dimensions={0}
  ROOT %mul = f32[256]{0} multiply(%ag.f, %p1)
}

ENTRY %main (a: f32[128], b: f32[8,8], c: f32[32], d: f32[64], e: f32[256]) -> f32[8,8] {
  %a = f32[128]{0} parameter(0)
  %b = f32[8,8]{1,0} parameter(1)
  %c = f32[32]{0} parameter(2)
  %d = f32[64]{0} parameter(3)
  %e = f32[256]{0} parameter(4)
  %ag-start = (f32[128], f32[512]) all-gather-start(%a), replica_groups=[1,4]<=[4], dimensions={0}
  %conv = f32[8,8]{1,0} convolution(%b, %b), dim_labels=bf_io->bf
  %ag-done = f32[512]{0} all-gather-done(%ag-start)
  %ag2-start = (f32[32], f32[128]) all-gather-start(%c), replica_groups=[1,4]<=[4], dimensions={0}
  %ag2-done = f32[128]{0} all-gather-done(%ag2-start)
  %f = f32[256]{0} fusion(%d, %e), kind=kCustom, calls=%fused_collective
  %ar = f32[8,8]{1,0} all-reduce(%conv), replica_groups=[1,4]<=[4], to_apply=%add
  ROOT %out = f32[8,8]{1,0} add(%ar, %conv)
}
"""


def test_overlap_counts_async_pairs_with_compute_between_and_fused_collectives():
    stats = collective_overlap(SCHEDULED)
    hidden = 3 * 128 * 4  # the all-gather behind the convolution: (n-1) x its 128-float shard
    adjacent = 3 * 32 * 4  # start and done with nothing between
    fused = 3 * 64 * 4  # fused with the multiply
    all_reduce = 2 * 3 / 4 * 64 * 4
    assert stats.total_bytes == hidden + adjacent + fused + all_reduce
    assert stats.async_pairs == 3 and stats.overlapped_pairs == 2
    assert stats.async_bytes == hidden + adjacent + fused
    assert stats.overlapped_bytes == hidden + fused
    assert stats.overlapped_share == pytest.approx((hidden + fused) / stats.total_bytes)
    # The hand-written module above: no async pairs, and its fusion holds only a collective.
    assert collective_overlap(HLO).overlapped_bytes == 0
