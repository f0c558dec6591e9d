"""MPMD training step (single controller, Pathways-style; also runs multi-controller).

For a `MeshPlan` the step compiles one program per piece and mesh (the block programs are shared
by all blocks: their variables have the same shapes):

  home mesh (backbone's):  embed fwd/bwd, backbone fwd/bwd, merge fwd/bwd (gate + Eq. 1), head
                           (final norm, softmax, LanguageModel loss, value_and_grad), adds
  each expert mesh:        experts fwd/bwd (the experts placed on it), inputs
  every mesh:              the learner's update of the variables that live on it

The optimizer is the experiment's own praxis learner (`task.train.learner`, e.g. ShardedAdafactor
with its learning-rate schedule and weight decay; see `mpmd/learner.py`), applied per mesh to the
variables that live there; its global-norm gradient clipping uses the norm over all meshes: each
mesh sends its sums of squares (two scalars) to the home mesh, which adds them and sends the
total back, with the same transport as the activations. An optax transformation given as
`optimizer` replaces the learner (no clipping, no cross-mesh reduction).

Forward programs return `jax.vjp`'s pullback (a pytree of residuals living on that mesh); the
backward programs apply it, so nothing is recomputed and residuals never leave their mesh. A
forward program differentiates only with respect to what reaches a trainable variable
(`_Cotangents`): block 0's input comes from the frozen embedding, so its programs take no input
cotangent and the embedding has no backward program (a block with nothing trainable in or above
it has no backward at all), as `jax.grad` of the whole model (the SPMD step) does. Only
activations cross meshes, at the merges: block input x to each expert mesh and the experts'
outputs back (forward), their cotangents the other way (backward). All programs are dispatched
asynchronously; expert programs are dispatched before the backbone's so that meshes overlap.

Multi-controller: each process calls only the programs of meshes that hold one of its devices
(`common.is_local`) and both ends of a move call the transport (`PermuteTransport`); arrays of
meshes a process does not own are None there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
import optax
from paxml import learners as learners_lib
from jax.sharding import NamedSharding, PartitionSpec as P

from mode_pax.mpmd import common
from mode_pax.mpmd import learner as learner_lib
from mode_pax.mpmd import model as model_lib
from mode_pax.mpmd import plan as plan_lib
from mode_pax.mpmd import transfer

HOME = 0


@dataclasses.dataclass
class _Slice:
  """Variables of one program argument: (full path, key inside the program) pairs."""
  mesh: int
  keys: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _BlockGrads:
  """What the backward pass of one block differentiates (static: selects compiled programs).

  Attributes:
    x: the block input's cotangent (something trainable lies upstream: an earlier block or a
      trainable embedding).
    backbone: (params, x) flags of the backbone's pullback.
    gate: whether the gate has trainable variables.
    experts: mesh index -> (params, x) flags of its experts' pullback; (False, False) when
      neither its experts nor anything upstream trains: no cotangent goes to that mesh.
  """
  x: bool
  backbone: tuple[bool, bool]
  gate: bool
  experts: dict[int, tuple[bool, bool]]

  @property
  def needed(self) -> bool:
    """Whether the block has a backward pass at all."""
    return self.x or self.gate or any(self.backbone) or any(
        any(f) for f in self.experts.values())


def _vjp(fn, primals: Sequence[Any], wrt: Sequence[bool], has_aux: bool = False):
  """`jax.vjp` of fn with respect to the primals flagged in `wrt` only.

  The others enter as constants: no tangent reaches them, so the pullback neither computes nor
  returns their cotangents (XLA is not relied on to drop dead outputs). No flag: the plain
  forward, and the pullback is None. has_aux: fn returns (output, aux), as for jax.vjp.

  Returns:
    (fn(*primals), pullback returning the cotangents of the flagged primals, in order), and aux
    last when has_aux.
  """
  if not any(wrt):
    out = fn(*primals)
    return (out[0], None, out[1]) if has_aux else (out, None)

  def diff_fn(*diff):
    it = iter(diff)
    return fn(*[next(it) if w else p for p, w in zip(primals, wrt)])
  return jax.vjp(diff_fn, *[p for p, w in zip(primals, wrt) if w], has_aux=has_aux)


def _unpack(cotangents, wrt: Sequence[bool]) -> list:
  """The pullback's cotangents at the flagged positions of `wrt`, None elsewhere."""
  it = iter(cotangents or ())
  return [next(it) if w else None for w in wrt]


def _variant(names: Sequence[str], wrt: Sequence[bool]) -> str:
  """Program-name suffix of a differentiation variant ('' when everything is differentiated)."""
  if all(wrt):
    return ''
  if not any(wrt):
    return '[no grad]'
  return '[d:' + ','.join(n for n, w in zip(names, wrt) if w) + ']'


class MpmdTrainer:
  """The MPMD train step of a MoDE model under a mesh plan.

  Attributes:
    pieces: The praxis MoDE model cut into pieces.
    optimizer: The experiment's praxis learner (`paxml.learners.Learner`), or an optax
      transformation that replaces it.
    prune_cotangents: Differentiate only what reaches a trainable variable (default). False
      differentiates every piece with respect to its inputs (block 0's input cotangent and the
      embedding backward included): the wasteful reference of `benchmarks/mpmd_sharding.py
      --flops`; results are the same.
    plan: The validated mesh plan.
    meshes: One jax Mesh per distinct device set of the plan (home first).
    transport: Moves activations between meshes and counts the bytes.
    recorder: Optional compiled-HLO accounting (benchmark).
  """

  def __init__(self, pieces: model_lib.MoDEPieces, plan: plan_lib.MeshPlan,
               optimizer: learners_lib.Learner | optax.GradientTransformation, batch_specs,
               trainable: Sequence[str] = common.MODE_TRAINABLE,
               transport: transfer.Transport | None = None, prune_cotangents: bool = True):
    plan.validate(num_devices=len(jax.devices()), num_experts=pieces.num_experts)
    plan.check_divisibility(pieces.sharded_dims(batch_specs))
    if isinstance(optimizer, learners_lib.Learner):
      learner_lib.check_learner(optimizer, pieces.var_hparams(batch_specs))
    # Clipping by the global gradient norm: a reduction over meshes (the same in every process).
    self._global_norm = isinstance(optimizer, learners_lib.Learner)
    self.pieces = pieces
    self.plan = plan
    self.optimizer = optimizer
    self.trainable = tuple(trainable)
    self.prune_cotangents = prune_cotangents
    self.batch_specs = batch_specs
    self.meshes = [common.make_mesh(ids) for ids in plan.meshes()]
    self.local = [common.is_local(m) for m in self.meshes]
    self.experts_on = [plan.experts_on(i) for i in range(len(self.meshes))]
    self.expert_meshes = [i for i in range(len(self.meshes)) if self.experts_on[i]]
    self.remote_expert_meshes = [i for i in self.expert_meshes if i != HOME]
    self.transport = transport or transfer.DevicePutTransport()
    self.recorder = common.Recorder()
    self.specs = {}
    for i, mesh in enumerate(self.meshes):
      self.specs[i] = pieces.partition_specs(batch_specs, mesh.size)
    b, t = batch_specs.ids.shape
    self.act = jax.ShapeDtypeStruct((b, t, pieces.model_dims), pieces.fprop_dtype)
    self._programs = {}

  # ---- variables -------------------------------------------------------------------------------
  def _slices(self, paths) -> dict[tuple, _Slice]:
    """Program argument -> its variables: ('outside',), ('backbone', i), ('gate', i),
    ('expert', i, j)."""
    slices = {}
    for path in sorted(paths):
      m = model_lib.BRANCH_RE.fullmatch(path)
      if m is None:
        if path.startswith(model_lib.TRANSFORMER):
          raise ValueError(f'{path} belongs to no MoDE block branch; the MPMD runtime cannot '
                           'place it.')
        key, mesh, rel = ('outside',), HOME, path
      else:
        block, branch, expert, rel = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if expert is None:
          key, mesh = (branch, block), HOME
        else:
          key = ('expert', block, int(expert))
          mesh = self.plan.mesh_index_of_expert(int(expert))
      slices.setdefault(key, _Slice(mesh)).keys.append((path, rel))
    return slices

  def init_state(self, flat_vars: dict[str, np.ndarray]) -> dict[int, dict[str, Any]]:
    """Places host variables (e.g. a Pax checkpoint's mdl_vars) on their meshes.

    Returns:
      mesh index -> {'params': {path: array}, 'opt': {'step': the steps taken (int32), 'tx':
      the learner's (or optax) state of the mesh's trainable variables}} (see
      `mpmd/learner.py`); meshes this process does not own are absent.
    """
    self._slice_map = self._slices(flat_vars)
    self._state_shardings = {}
    self._train_paths = {k for k in flat_vars if common.is_trainable(k, self.trainable)}
    state = {}
    self._updates = {}
    for i, mesh in enumerate(self.meshes):
      if not self.local[i]:
        continue
      paths = [p for s in self._slice_map.values() if s.mesh == i for p, _ in s.keys]
      params = {p: common.place(flat_vars[p], mesh, self.specs[i][p]) for p in paths}
      train = {p: v for p, v in params.items() if p in self._train_paths}
      self._updates[i] = learner_lib.mesh_update(
          self.optimizer, self.pieces.var_hparams(self.batch_specs), train)
      opt = common.init_opt_state(self._updates[i], {p: flat_vars[p] for p in train}, mesh,
                                  self.specs[i])
      state[i] = {'params': params, 'opt': opt}
      # Updates keep variables and optimizer state where they are.
      self._state_shardings[i] = jax.tree_util.tree_map(lambda a: a.sharding, (train, opt))
    self._plan_cotangents()
    return state

  def _trains(self, key) -> bool:
    """Whether the program argument `key` has a trainable variable."""
    return key in self._slice_map and any(
        p in self._train_paths for p, _ in self._slice_map[key].keys)

  def _plan_cotangents(self):
    """Which cotangents the backward pass computes (the same in every process).

    A block's input cotangent is needed only when something trainable lies upstream: a trainable
    embedding (any trainable 'outside' variable counts: the embedding may be tied to the
    softmax) or a trainable variable of an earlier block.
    """
    B = self.pieces.num_blocks
    prune = self.prune_cotangents
    upstream = self._trains(('outside',)) or not prune
    self._embed_grad = upstream
    self._block_grads = []
    for i in range(B):
      experts = {}
      for m in self.expert_meshes:
        params = any(self._trains(('expert', i, j)) for j in self.experts_on[m]) or not prune
        experts[m] = (params, upstream) if params or upstream else (False, False)
      backbone = self._trains(('backbone', i)) or not prune
      grads = _BlockGrads(x=upstream, backbone=(backbone, upstream),
                          gate=self._trains(('gate', i)) or not prune, experts=experts)
      self._block_grads.append(grads)
      upstream = upstream or grads.needed
    self._head_x_grad = upstream

  def _args(self, state, key) -> tuple[dict, dict]:
    """(trainable, frozen) dicts of one program argument, keyed inside the program."""
    params = state[self._slice_map[key].mesh]['params']
    train, frozen = {}, {}
    for path, rel in self._slice_map[key].keys:
      (train if path in self._train_paths else frozen)[rel] = params[path]
    return train, frozen

  def _full(self, key, grads: dict) -> dict:
    rel_to_path = {rel: path for path, rel in self._slice_map[key].keys}
    return {rel_to_path[r]: g for r, g in grads.items()}

  # ---- programs --------------------------------------------------------------------------------
  def _replicate(self, mesh_index, tree):
    sharding = NamedSharding(self.meshes[mesh_index], P())
    return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)

  def _program(self, kind: str, mesh_index: int, wrt: tuple[bool, ...] | None):
    key = (kind, mesh_index, wrt)
    if key not in self._programs:
      make = getattr(self, f'_{kind}_fn')
      self._programs[key] = jax.jit(make(mesh_index) if wrt is None else make(mesh_index, wrt))
    return self._programs[key]

  # Names of the differentiable arguments of each forward program, for program names.
  _WRT_NAMES = {'embed_fwd': ('w',), 'backbone_fwd': ('w', 'x'), 'experts_fwd': ('w', 'x'),
                'head': ('w', 'x')}

  def _call(self, kind: str, mesh_index: int, *args, wrt: tuple[bool, ...] | None = None,
            variant: str | None = None):
    """Runs program `kind` on a mesh; `wrt` selects a forward program's differentiation
    variant, `variant` names a backward program's (it applies that variant's pullback)."""
    mesh = self.meshes[mesh_index]
    if variant is None:
      names = self._WRT_NAMES.get(kind, ('w', 'x', 'bb') + tuple(
          f'e{j}' for j in range(self.pieces.num_experts)))
      variant = '' if wrt is None else _variant(names, wrt)
    with mesh:
      return self.recorder(f'{kind}{variant}@mesh{mesh_index}', mesh.size,
                           self._program(kind, mesh_index, wrt), *args)

  def _inputs_fn(self, mesh_index):
    del mesh_index
    return self.pieces.inputs

  def _embed_fwd_fn(self, mi, wrt):
    def fn(train, frozen, batch):
      x, pullback = _vjp(lambda tr: self.pieces.embed({**tr, **frozen}, batch), (train,), wrt)
      return self._replicate(mi, x), pullback
    return fn

  def _pullback_fn(self, mi):
    """Applies a forward program's pullback to a cotangent; replicates activation cotangents."""
    sharding = NamedSharding(self.meshes[mi], P())

    def fn(pullback, g):
      return jax.tree_util.tree_map(
          lambda a: jax.lax.with_sharding_constraint(a, sharding)
          if a.shape == self.act.shape else a, pullback(g))
    return fn

  # One backward program per forward program (same function, separate compiled programs).
  _embed_bwd_fn = _backbone_bwd_fn = _experts_bwd_fn = _merge_bwd_fn = _pullback_fn

  def _backbone_fwd_fn(self, mi, wrt):
    def fn(train, frozen, x, inputs):
      return _vjp(lambda tr, x: self.pieces.backbone({**tr, **frozen}, x, *inputs), (train, x),
                  wrt)
    return fn

  def _experts_fwd_fn(self, mi, wrt):
    def fn(trains, frozens, x, inputs):
      def branches(trs, x):
        return [self.pieces.expert({**tr, **fr}, x, *inputs) for tr, fr in zip(trs, frozens)]
      ys, pullback = _vjp(branches, (trains, x), wrt)
      return self._replicate(mi, ys), pullback
    return fn

  def _merge_fwd_fn(self, mi, wrt):
    """wrt: flags of (gate params, x, backbone output, expert output 0, 1, ...). Also returns
    the block's gate summaries."""
    def fn(train, frozen, x, paddings, backbone_out, expert_outs):
      y, pullback, summaries = _vjp(
          lambda tr, x, bb, *outs: self.pieces.merge({**tr, **frozen}, x, paddings, bb, outs),
          (train, x, backbone_out, *expert_outs), wrt, has_aux=True)
      return self._replicate(mi, y), pullback, self._replicate(mi, summaries)
    return fn

  def _head_fn(self, mi, wrt):
    """Loss and the gradients flagged in wrt (outside params, x)."""
    def fn(train, frozen, x, batch):
      loss_fn = lambda tr, x: self.pieces.head({**tr, **frozen}, x, batch)
      if not any(wrt):
        loss, metrics = loss_fn(train, x)
        return loss, metrics, None, None
      argnums = tuple(k for k, w in enumerate(wrt) if w)
      (loss, metrics), grads = jax.value_and_grad(loss_fn, argnums=argnums, has_aux=True)(
          train, x)
      g_train, g_x = _unpack(grads, wrt)
      return loss, metrics, g_train, None if g_x is None else self._replicate(mi, g_x)
    return fn

  def _add_fn(self, mi):
    return lambda trees: self._replicate(mi, common.tree_sum(trees))

  def _add_grads_fn(self, mi):
    del mi
    return lambda pairs: {p: a + b for p, (a, b) in pairs.items()}

  # The sums of squares of all meshes, added on the home mesh (an update program: flops.py).
  _update_reduce_fn = _add_fn

  def _update_norms_fn(self, mi):
    """This mesh's [sum of squared gradients, sum of squared variables]."""
    return lambda train, grads: self._replicate(
        mi, self._updates[mi].local_sums(train, grads))

  def _update_fn(self, mi):
    """The learner's update of this mesh's variables (sums: added over all meshes, or None)."""
    def fn(train, opt, grads, sums):
      new_train, opt, summaries = self._updates[mi].update(train, opt, grads, sums)
      new_train, opt = jax.lax.with_sharding_constraint((new_train, opt),
                                                        self._state_shardings[mi])
      return new_train, opt, self._replicate(mi, summaries)
    return fn

  # ---- the step --------------------------------------------------------------------------------
  def place_batch(self, batch) -> dict[int, Any]:
    """The host batch on every local mesh (each process reads the same batch: no transfer)."""
    return {i: common.place_tree(batch, m) for i, m in enumerate(self.meshes) if self.local[i]}

  def _move(self, x, src: int, dst: int, like=None):
    if src == dst:
      return x
    return self.transport.move(x, self.meshes[src], self.meshes[dst],
                               self.act if like is None else like)

  def _move_list(self, xs, src, dst, n):
    return [self._move(None if xs is None else xs[k], src, dst) for k in range(n)]

  def step(self, state, batch):
    """One training step: returns (new state, loss, metrics, grads) (see `train_step`)."""
    state, out = self.train_step(state, batch)
    return state, out.loss, out.metrics, out.grads

  def step_count(self, state) -> int:
    """Steps taken (paxml's TrainState.step), from any local mesh (all meshes agree)."""
    return int(np.asarray(next(iter(state.values()))['opt']['step']))

  def train_step(self, state, batch) -> tuple[dict, common.StepOutput]:
    """One training step: (new state, StepOutput).

    loss, metrics and summaries are None / empty in processes that do not own the home mesh;
    grads maps a mesh index to {path: raw gradient} for the local meshes.
    """
    B, N = self.pieces.num_blocks, self.pieces.num_experts
    home_local = self.local[HOME]
    placed = self.place_batch(batch)
    inputs = {i: self._call('inputs', i, placed[i]) for i in placed}

    # Forward: each program differentiates what `_plan_cotangents` asks for (its `wrt` flags).
    x = x_pull = None
    if home_local:
      x, x_pull = self._call('embed_fwd', HOME, *self._args(state, ('outside',)), placed[HOME],
                             wrt=(self._embed_grad,))
    pulls, summaries = [], {}
    for i in range(B):
      bg = self._block_grads[i]
      x_on = {m: self._move(x, HOME, m) for m in self.remote_expert_meshes}
      x_on[HOME] = x
      outs, block_pulls = [None] * N, {}
      for m in self.expert_meshes:  # experts first: they run while the backbone runs
        if not self.local[m]:
          continue
        args = [self._args(state, ('expert', i, j)) for j in self.experts_on[m]]
        ys, block_pulls[m] = self._call('experts_fwd', m, [a[0] for a in args],
                                        [a[1] for a in args], x_on[m], inputs[m],
                                        wrt=bg.experts[m])
        for j, y in zip(self.experts_on[m], ys):
          outs[j] = y
      if home_local:
        y_bb, block_pulls['backbone'] = self._call(
            'backbone_fwd', HOME, *self._args(state, ('backbone', i)), x, inputs[HOME],
            wrt=bg.backbone)
      for m in self.remote_expert_meshes:
        moved = self._move_list(None if not self.local[m] else
                                [outs[j] for j in self.experts_on[m]], m, HOME,
                                len(self.experts_on[m]))
        for j, y in zip(self.experts_on[m], moved):
          outs[j] = y
      if home_local:
        x, block_pulls['merge'], block_summaries = self._call(
            'merge_fwd', HOME, *self._args(state, ('gate', i)), x, inputs[HOME][0], y_bb, outs,
            wrt=self._merge_wrt(bg))
        prefix = model_lib.BLOCK_SUMMARY_PREFIX.format(i)
        summaries.update({prefix + k: v for k, v in block_summaries.items()})
      pulls.append(block_pulls)

    # Loss and backward.
    grads = {i: {} for i in state}
    loss = metrics = g_x = None
    if home_local:
      loss, metrics, g_out, g_x = self._call(
          'head', HOME, *self._args(state, ('outside',)), x, placed[HOME],
          wrt=(True, self._head_x_grad))
      grads[HOME].update(self._full(('outside',), g_out))
    for i in reversed(range(B)):
      bg, block_pulls = self._block_grads[i], pulls[i]
      if not bg.needed:  # nothing trainable in or above this block: no backward
        continue
      merge_wrt = self._merge_wrt(bg)
      g_outs = [None] * N
      g_x_gate = g_bb = None
      if home_local:
        g_gate, g_x_gate, g_bb, *g_outs = _unpack(self._call(
            'merge_bwd', HOME, block_pulls['merge'], g_x,
            variant=_variant(('w', 'x', 'bb') + tuple(f'e{j}' for j in range(N)), merge_wrt)),
            merge_wrt)
        if g_gate is not None:
          grads[HOME].update(self._full(('gate', i), g_gate))
      g_on = {}
      for m in self.remote_expert_meshes:
        if any(bg.experts[m]):
          g_on[m] = self._move_list(None if not home_local else
                                    [g_outs[j] for j in self.experts_on[m]], HOME, m,
                                    len(self.experts_on[m]))
      if home_local and self.experts_on[HOME]:
        g_on[HOME] = [g_outs[j] for j in self.experts_on[HOME]]
      g_x_experts = {}
      for m in self.expert_meshes:
        if not self.local[m] or not any(bg.experts[m]):
          continue
        g_trains, g_x_experts[m] = _unpack(self._call(
            'experts_bwd', m, block_pulls[m], g_on[m],
            variant=_variant(self._WRT_NAMES['experts_fwd'], bg.experts[m])), bg.experts[m])
        for j, g in zip(self.experts_on[m], g_trains or ()):
          grads[m].update(self._full(('expert', i, j), g))
      g_x_bb = None
      if home_local and any(bg.backbone):
        g_bb_train, g_x_bb = _unpack(self._call(
            'backbone_bwd', HOME, block_pulls['backbone'], g_bb,
            variant=_variant(self._WRT_NAMES['backbone_fwd'], bg.backbone)), bg.backbone)
        if g_bb_train is not None:
          grads[HOME].update(self._full(('backbone', i), g_bb_train))
      g_x = None
      if bg.x:  # the block input's cotangent: gate + backbone + experts
        parts = [] if not home_local else [g_x_gate, g_x_bb]
        for m in self.expert_meshes:
          moved = self._move(g_x_experts.get(m), m, HOME)
          if home_local:
            parts.append(moved)
        if home_local:
          g_x = self._call('add', HOME, parts)
    if home_local and self._embed_grad:
      (g_emb,) = self._call('embed_bwd', HOME, x_pull, g_x)
      g_emb = self._full(('outside',), g_emb)
      shared = {p: [grads[HOME][p], g] for p, g in g_emb.items() if p in grads[HOME]}
      if shared:  # e.g. a trainable embedding shared with the softmax
        grads[HOME].update(self._call('add_grads', HOME, shared))
      grads[HOME].update({p: g for p, g in g_emb.items() if p not in shared})

    # Learner updates, each on its own mesh, after the global gradient norm.
    trains = {m: {p: v for p, v in s['params'].items() if p in self._train_paths}
              for m, s in state.items()}
    sums_on = {}
    if self._global_norm:
      local_sums = {m: self._call('update_norms', m, trains[m], grads[m]) for m in state}
      at_home = [self._move(local_sums.get(m), m, HOME, like=learner_lib.SUMS)
                 for m in range(len(self.meshes))]
      total = self._call('update_reduce', HOME, at_home) if home_local else None
      sums_on = {m: self._move(total, HOME, m, like=learner_lib.SUMS)
                 for m in range(len(self.meshes))}
    new_state = {}
    for m, mesh_state in state.items():
      new_train, opt, learner_summaries = self._call(
          'update', m, trains[m], mesh_state['opt'], grads[m], sums_on.get(m))
      new_state[m] = {'params': {**mesh_state['params'], **new_train}, 'opt': opt}
      if m == HOME:
        summaries.update(learner_summaries)
    return new_state, common.StepOutput(loss, metrics, grads, summaries)

  def _merge_wrt(self, bg: _BlockGrads) -> tuple[bool, ...]:
    """Merge flags: gate params, x, backbone output, each expert's output (its mesh's x flag)."""
    if not bg.needed:
      return (False,) * (3 + self.pieces.num_experts)
    return (bg.gate, bg.x, bg.backbone != (False, False)) + tuple(
        any(bg.experts[self.plan.mesh_index_of_expert(j)])
        for j in range(self.pieces.num_experts))

  # ---- inspection ------------------------------------------------------------------------------
  def host_params(self, state) -> dict[str, np.ndarray]:
    """Host copies of the fully addressable variables of the local meshes."""
    out = {}
    for mesh_state in state.values():
      for path, v in mesh_state['params'].items():
        if v.is_fully_addressable:
          out[path] = np.asarray(v)
    return out
