import asyncio
import math

import pytest

from bdc_ray.boost.prompts import fallback_thoughts, parse_thoughts
from bdc_ray.boost.search import MCTS
from bdc_ray.boost.tree import (
    ChanceNode,
    DecisionNode,
    Program,
    backup,
    p_ucb,
    prune_children,
    select_child,
)
from bdc_ray.config import AgentConfig, SearchConfig
from bdc_ray.data.problems import function_problem
from tests.boost.scripted import RateChecker, ScriptedLLM

PROBLEM = function_problem(
    "t/f",
    "def f():\n    '''one'''\n",
    "f",
    "def check(candidate):\n    assert candidate() == 1\n    assert candidate() == 1\n",
)
A, B = AgentConfig(name="A", temperature=0.8), AgentConfig(name="B", temperature=0.8)


def chance(parent, prior=0.5, returns=(), value=None, programs=()):
    c = ChanceNode(
        "t",
        prior,
        "A",
        "detail",
        parent,
        returns=list(returns),
        value=value,
        programs=list(programs),
    )
    c.child = DecisionNode(c.thoughts, via=c)
    parent.children.append(c)
    return c


def test_p_ucb_values_are_pinned():
    root = DecisionNode([], visits=10)
    c = chance(root, prior=0.5, returns=[0.4, 0.8])
    beta = math.log((10 + 10 + 1) / 10) + 4
    expected = 0.8 + beta * 0.5 * math.sqrt(math.log(10)) / 3
    assert p_ucb(c, 10) == pytest.approx(expected)
    assert p_ucb(c, 10) == pytest.approx(1.9992574, rel=1e-6)
    assert p_ucb(c, 10, q_mode="mean") == pytest.approx(expected - 0.2)
    assert p_ucb(chance(root, prior=1.0), 1) == 0.0  # ln 1 = 0: no exploration bonus yet


def test_select_prefers_the_pucb_maximum_and_never_a_pruned_child():
    root = DecisionNode([], visits=5)
    low = chance(root, prior=0.1, returns=[0.2])
    high = chance(root, prior=0.9, returns=[0.2])
    assert select_child(root) is high
    high.pruned = True
    assert select_child(root) is low
    low.pruned = True
    assert select_child(root) is None


def test_backup_discounts_by_gamma_up_the_path():
    root = DecisionNode([])
    a = chance(root)
    b = chance(a.child)
    c = chance(b.child)
    backup(c, 1.0, gamma=0.9)
    assert (
        c.returns == [1.0]
        and b.returns == [pytest.approx(0.9)]
        and a.returns == [pytest.approx(0.81)]
    )
    assert (a.visits, b.visits, c.visits) == (1, 1, 1)
    assert root.visits == 1 and a.child.visits == 1 and b.child.visits == 1


def test_prune_rules():
    ok = Program("x", "A", 0.5, False, "failed")
    dead = Program("x", "A", 0.0, False, "error", compiled=False)
    root = DecisionNode([])
    parent = chance(root, value=0.5)
    node = parent.child
    keep = chance(node, value=0.6, programs=[ok])
    worse = chance(node, value=0.3, programs=[ok])
    crashed = chance(node, value=0.0, programs=[dead, dead])
    equal = chance(node, value=0.5, programs=[ok])
    pruned = prune_children(node, [keep, worse, crashed, equal], margin=0.0)
    assert set(map(id, pruned)) == {id(worse), id(crashed)}
    assert not keep.pruned and not equal.pruned
    # with a margin, slightly worse children survive
    node2 = chance(root, value=0.5).child
    near = chance(node2, value=0.45, programs=[ok])
    other = chance(node2, value=0.9, programs=[ok])
    assert prune_children(node2, [near, other], margin=0.1) == []
    # the last live child is never pruned, however bad
    node3 = chance(root, value=0.9).child
    only = chance(node3, value=0.0, programs=[dead])
    assert prune_children(node3, [only]) == [] and not only.pruned


def run(llm, cfg, agents=(A, B)):
    return asyncio.run(MCTS(PROBLEM, list(agents), llm, RateChecker(), cfg).run())


def test_two_agents_expand_each_others_thoughts_and_values_average_both_agents():
    def expand(agent, thoughts):
        return [
            (f"{agent}{len(thoughts)}-{i}" if not thoughts else f"{thoughts[-1]}>{agent}{i}", 0.5)
            for i in range(2)
        ]

    llm = ScriptedLLM(expand=expand, code=lambda agent, thoughts: 0.5 if agent == "A" else 0.0)
    mcts = MCTS(
        PROBLEM,
        [A, B],
        llm,
        RateChecker(),
        SearchConfig(width=2, trials=2, rollouts=2, max_refines=0),
    )
    result = asyncio.run(mcts.run())
    root_children = mcts.root.children
    assert {c.author for c in root_children} == {"A", "B"} and len(root_children) == 4
    # the second rollout expanded one first-level thought with both agents' proposals
    expanded = [c for c in root_children if c.child.children]
    assert len(expanded) == 1
    grand = expanded[0].child.children
    assert {c.author for c in grand} == {"A", "B"}
    assert all(c.thought.startswith(expanded[0].thought + ">") for c in grand)
    # every thought is verified by programs of both agents: value = mean(0.5, 0.5, 0, 0)
    for c in root_children:
        assert sorted(p.author for p in c.programs) == ["A", "A", "B", "B"]
        assert c.value == pytest.approx(0.25)
    assert result.stats.executions == 8 * 4  # 8 thoughts x (2 agents x 2 trials)
    assert all(temp > 0 for _, kind, temp in llm.calls if kind == "simulate")
    assert_visits_consistent(mcts.root)


def test_refine_reflects_by_the_other_agent_with_prior_one_and_is_bounded():
    llm = ScriptedLLM(
        expand=lambda agent, thoughts: [(f"{agent}-{len(thoughts)}", 0.5)],
        code=lambda agent, thoughts: 0.5,
    )
    mcts = MCTS(
        PROBLEM, [A], llm, RateChecker(), SearchConfig(width=1, trials=1, rollouts=1, max_refines=2)
    )
    asyncio.run(mcts.run())
    kids = mcts.root.children
    assert [c.action for c in kids] == ["detail", "refine"]
    assert kids[1].prior == 1.0 and kids[1].replaces is kids[0]
    assert kids[1].thoughts == ["A-fix(A-0)"]  # replaces the last thought, same depth
    assert mcts.stats.refined == 1
    # two agents: the author's peer reflects; at most max_refines per node
    llm2 = ScriptedLLM(
        expand=lambda agent, thoughts: [(f"{agent}-{len(thoughts)}-{i}", 0.5) for i in range(3)],
        code=lambda agent, thoughts: 0.5 if agent == "A" else 0.0,
    )
    mcts2 = MCTS(
        PROBLEM,
        [A, B],
        llm2,
        RateChecker(),
        SearchConfig(width=3, trials=1, rollouts=1, max_refines=2),
    )
    asyncio.run(mcts2.run())
    refines = [c for c in mcts2.root.children if c.action == "refine"]
    assert len(refines) == 2 and mcts2.root.refines == 2
    assert all(c.author == "B" for c in refines)  # best programs were A's, so B reflects
    assert [k for _, k, _ in llm2.calls].count("reflect") == 2


def test_early_stop_when_a_program_passes_every_public_test():
    llm = ScriptedLLM(
        expand=lambda agent, thoughts: [(f"{agent}{len(thoughts)}", 0.5)],
        code=lambda agent, thoughts: 1.0 if len(thoughts) == 2 else 0.5,
    )
    result = run(llm, SearchConfig(width=1, trials=1, rollouts=16, max_refines=0), agents=(A,))
    assert result.solved_public and result.best_reward == 1.0
    assert result.stats.rollouts == 2 and len(result.best_thoughts) == 2
    assert result.stats.early_stopped
    cont = run(
        llm,
        SearchConfig(width=1, trials=1, rollouts=5, max_refines=0, early_stop=False),
        agents=(A,),
    )
    assert cont.stats.rollouts == 5


def test_max_depth_is_never_exceeded():
    llm = ScriptedLLM(
        expand=lambda agent, thoughts: [(f"{agent}{len(thoughts)}", 0.5)],
        code=lambda agent, thoughts: 0.1 * len(thoughts),
    )
    result = run(
        llm, SearchConfig(width=1, trials=1, rollouts=10, max_depth=3, max_refines=0), agents=(A,)
    )
    assert result.stats.depth == 3 and max(p["depth"] for p in result.programs) == 3
    assert result.stats.rollouts == 10  # later rollouts re-visit the max-depth leaf


def test_best_program_ties_go_to_fewer_thoughts_then_earlier():
    llm = ScriptedLLM(
        expand=lambda agent, thoughts: [(f"{agent}{len(thoughts)}-{i}", 0.5) for i in range(2)],
        code=lambda agent, thoughts: 0.5,
    )
    result = run(llm, SearchConfig(width=2, trials=1, rollouts=3, max_refines=0), agents=(A,))
    assert result.best_reward == 0.5 and result.best_thoughts == ["A0-0"]


def test_pruned_children_are_not_explored():
    rates = {"A0-0": 0.9, "A0-1": 0.1, "A1-0": 0.3, "A1-1": 0.95}

    def code(agent, thoughts):
        return rates.get(thoughts[-1], 0.96)

    llm = ScriptedLLM(
        expand=lambda agent, thoughts: [
            (f"A{len(thoughts)}-{i}", 0.9 if i == 0 else 0.1) for i in range(2)
        ],
        code=code,
    )
    mcts = MCTS(
        PROBLEM, [A], llm, RateChecker(), SearchConfig(width=2, trials=1, rollouts=6, max_refines=0)
    )
    result = asyncio.run(mcts.run())
    first = {c.thought: c for c in mcts.root.children}
    second = {c.thought: c for c in first["A0-0"].child.children}
    # A1-0 (0.3) is below its parent's value (0.9): pruned, though its prior is the highest
    assert second["A1-0"].pruned and not second["A1-1"].pruned
    assert not second["A1-0"].child.children and second["A1-0"].visits == 1
    assert result.stats.pruned >= 1
    assert not first["A0-1"].pruned  # the root's children have no parent value to fall below


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[{"thought": "sort it", "Reasonableness": 0.7}]', [("sort it", 0.7)]),
        (
            'Sure!\n```json\n[{"Thought": "a", "score": 8}, {"step": "b"}]\n```',
            [("a", 0.8), ("b", 0.5)],
        ),
        ('{"thought": "only one", "Reasonableness": "90"}', [("only one", 0.9)]),
        ('{"steps": [{"thought": "x", "Reasonableness": 1}]}', [("x", 1.0)]),
        ('["plain", "strings"]', [("plain", 0.5), ("strings", 0.5)]),
        ("no json here at all", None),
    ],
)
def test_parse_thoughts(text, expected):
    assert parse_thoughts(text, 2) == expected


def test_unparseable_answers_get_a_repair_then_lines_with_uniform_prior():
    llm = ScriptedLLM(
        expand=lambda agent, thoughts: "1. first idea\n2. second idea\n3. third",
        code=lambda a, t: 0.2,
    )
    mcts = MCTS(
        PROBLEM, [A], llm, RateChecker(), SearchConfig(width=3, trials=1, rollouts=1, max_refines=0)
    )
    asyncio.run(mcts.run())
    assert [k for _, k, _ in llm.calls].count("repair") == 1
    assert [(c.thought, c.prior) for c in mcts.root.children] == [
        ("first idea", pytest.approx(1 / 3)),
        ("second idea", pytest.approx(1 / 3)),
        ("third", pytest.approx(1 / 3)),
    ]
    assert fallback_thoughts("```\n{\n- a real step\n", 2) == [("a real step", 0.5)]
    # a repair that works is used with its priors
    llm2 = ScriptedLLM(
        expand=lambda agent, thoughts: "garbled",
        repair=lambda agent, text: '[{"thought": "fixed", "Reasonableness": 0.6}]',
        code=lambda a, t: 0.2,
    )
    mcts2 = MCTS(
        PROBLEM,
        [A],
        llm2,
        RateChecker(),
        SearchConfig(width=3, trials=1, rollouts=1, max_refines=0),
    )
    asyncio.run(mcts2.run())
    assert [(c.thought, c.prior) for c in mcts2.root.children] == [("fixed", 0.6)]


def test_preference_pairs_from_siblings():
    llm = ScriptedLLM(
        expand=lambda agent, thoughts: [("good", 0.5), ("bad", 0.5)],
        code=lambda agent, thoughts: 0.8 if thoughts[-1] == "good" else 0.1,
    )
    result = run(llm, SearchConfig(width=2, trials=1, rollouts=1, max_refines=0), agents=(A,))
    assert result.prefs == [
        {
            "problem_id": "t/f",
            "thoughts": [],
            "chosen": "good",
            "rejected": "bad",
            "chosen_value": 0.8,
            "rejected_value": 0.1,
        }
    ]


def assert_visits_consistent(node: DecisionNode) -> None:
    """P-UCB's bookkeeping: a decision node's N is the sum of its children's n, and a chance
    node's visits are its returns, at every level."""
    for c in node.children:
        assert c.visits == c.n, c.thought
        assert_visits_consistent(c.child)
    if node.children:
        assert node.visits == sum(c.n for c in node.children), node.thoughts


def test_the_searchs_own_gamma_and_c_decide_what_is_backed_up_and_which_child_is_selected():
    """With the configured defaults (gamma 0.9, c 4): after the first rollout the root has
    N = 2, so the exploration term favours the high-prior child "lo" over the higher-valued
    "hi"; its grandchild's 0.8 reaches it discounted once."""
    rates = {"hi": 0.5, "lo": 0.25}
    llm = ScriptedLLM(
        expand=lambda agent, thoughts: (
            [("hi", 0.1), ("lo", 0.9)] if not thoughts else [(f"{thoughts[-1]}>x", 0.5)]
        ),
        code=lambda agent, thoughts: rates.get(thoughts[-1], 0.8),
    )
    cfg = SearchConfig(width=2, trials=1, rollouts=2, max_refines=0)
    mcts = MCTS(PROBLEM, [A], llm, RateChecker(), cfg)
    asyncio.run(mcts.run())
    hi, lo = mcts.root.children
    scores = [p_ucb(c, 2, cfg.c_base, cfg.c) for c in (hi, lo)]
    assert scores[1] > scores[0]  # pinned: c = 4 explores; c = 0 would pick "hi"
    assert not hi.child.children and [g.thought for g in lo.child.children] == ["lo>x"]
    assert hi.returns == [0.5]
    assert lo.returns == [0.25, pytest.approx(0.9 * 0.8)]  # gamma = 0.9, one level up
    assert lo.child.children[0].returns == [0.8]
    assert_visits_consistent(mcts.root)
    assert mcts.root.visits == 3
    s = mcts.stats  # the second rollout went below the root; its backup updated two levels
    assert (s.selections_below_root, s.backups, s.deepest_backup, s.early_stopped) == (
        1,
        2,
        2,
        False,
    )


def test_reflection_sees_the_failing_program_and_the_feedback_of_its_tests():
    llm = ScriptedLLM(
        expand=lambda agent, thoughts: [(f"{agent}-{len(thoughts)}", 0.5)],
        code=lambda agent, thoughts: 0.5,
    )
    cfg = SearchConfig(width=1, trials=1, rollouts=1, max_refines=1)
    asyncio.run(MCTS(PROBLEM, [A], llm, RateChecker(), cfg).run())
    (text,) = [t for _, kind, t in llm.prompts if kind == "reflect"]
    assert "def f():\n    return 1  # rate=0.5" in text  # the best program of the child
    assert "assert f() == 1 failed, rate 0.5" in text  # what its failing tests said
    assert "1. A-0" in text  # and the thoughts it was written from


def test_prune_comes_before_refine_and_refine_children_are_pruned_too():
    """Under a 0.5 parent: "a>1" (0.2) is pruned before any reflection is spent on it; the
    live failing "a>2" (0.6) is reflected on, and its refine sibling (0.1) is pruned."""
    rates = {"a": 0.5, "a>1": 0.2, "a>2": 0.6, "fix(a>2)": 0.1}
    reflected = []

    def reflect(agent, thoughts):
        reflected.append(list(thoughts))
        # at the root the replacement repeats the child, so it is dropped
        return thoughts[-1] if len(thoughts) == 1 else f"fix({thoughts[-1]})"

    llm = ScriptedLLM(
        expand=lambda agent, thoughts: (
            [("a", 0.5)] if not thoughts else [("a>1", 0.5), ("a>2", 0.5)]
        ),
        code=lambda agent, thoughts: rates[thoughts[-1]],
        reflect=reflect,
    )
    cfg = SearchConfig(width=2, trials=1, rollouts=2, max_refines=2)
    mcts = MCTS(PROBLEM, [A], llm, RateChecker(), cfg)
    asyncio.run(mcts.run())
    assert reflected == [["a"], ["a", "a>2"]]  # never the pruned "a>1"
    kids = {c.thought: c for c in mcts.root.children[0].child.children}
    assert sorted(kids) == ["a>1", "a>2", "fix(a>2)"]
    assert kids["a>1"].pruned and kids["fix(a>2)"].pruned and not kids["a>2"].pruned
    assert mcts.stats.pruned == 2 and mcts.stats.refined == 1
    assert_visits_consistent(mcts.root)
