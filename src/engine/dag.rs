//! The order stages run in: a dependency graph over the workflow's stage list.
//!
//! A stage without `dependsOn` depends on the stage before it in the list (the first stage on
//! nothing); a stage with `dependsOn` depends on exactly the stages it names (an empty list: on
//! nothing). Stages are referred to by their index in the list.

use crate::api::Stage;
use std::collections::HashMap;

/// Why a workflow's stages cannot be ordered.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DagError {
    /// A `dependsOn` entry names no stage of the workflow.
    #[error("stage {stage:?} depends on {depends_on:?}, which is not a stage of this workflow")]
    UnknownStage {
        /// The stage whose `dependsOn` is wrong.
        stage: String,
        /// The name it gives.
        depends_on: String,
    },
    /// Stages depend on each other in a circle, so none of them can start.
    #[error("dependency cycle: {}", stages.join(" -> "))]
    Cycle {
        /// The cycle as a path along dependencies, ending where it starts: `a -> b -> a` means
        /// `a` depends on `b`, which depends on `a` (explicitly, or by following it in the list).
        stages: Vec<String>,
    },
    /// Two stages have the same name.
    #[error("more than one stage is named {0:?}")]
    DuplicateName(String),
}

/// The dependencies of every stage of a workflow, known to be free of cycles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    // deps[i]: the indices of the stages stage i waits for, ascending, without repeats.
    deps: Vec<Vec<usize>>,
}

/// Works out which stages each stage waits for, and checks that every stage can run.
pub fn plan(stages: &[Stage]) -> Result<Plan, DagError> {
    let mut index = HashMap::with_capacity(stages.len());
    for (i, s) in stages.iter().enumerate() {
        if index.insert(s.name.as_str(), i).is_some() {
            return Err(DagError::DuplicateName(s.name.clone()));
        }
    }
    let mut deps = Vec::with_capacity(stages.len());
    for (i, s) in stages.iter().enumerate() {
        let mut d = match &s.depends_on {
            None => i.checked_sub(1).into_iter().collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    index
                        .get(n.as_str())
                        .copied()
                        .ok_or_else(|| DagError::UnknownStage {
                            stage: s.name.clone(),
                            depends_on: n.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        d.sort_unstable();
        d.dedup();
        deps.push(d);
    }
    let plan = Plan { deps };
    if let Some(cycle) = plan.find_cycle() {
        return Err(DagError::Cycle {
            stages: cycle.into_iter().map(|i| stages[i].name.clone()).collect(),
        });
    }
    Ok(plan)
}

impl Plan {
    /// How many stages there are.
    pub fn len(&self) -> usize {
        self.deps.len()
    }

    /// Whether there are no stages.
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// The indices of the stages that stage `i` waits for, ascending. Panics if `i` is out of
    /// range.
    pub fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    /// The indices of every stage that stage `i` waits for, directly or through others,
    /// ascending: the stages whose outputs it may read.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut todo: Vec<usize> = self.deps[i].clone();
        while let Some(d) = todo.pop() {
            if !std::mem::replace(&mut seen[d], true) {
                todo.extend(&self.deps[d]);
            }
        }
        (0..self.len()).filter(|&j| seen[j]).collect()
    }

    /// The indices of stages not in `started` whose dependencies are all in `succeeded`, in list
    /// order. Both slices are indexed by stage; an index past a slice's end counts as `false`.
    pub fn ready(&self, succeeded: &[bool], started: &[bool]) -> Vec<usize> {
        let flag = |v: &[bool], i: usize| v.get(i).copied().unwrap_or(false);
        (0..self.len())
            .filter(|&i| !flag(started, i) && self.deps[i].iter().all(|&d| flag(succeeded, d)))
            .collect()
    }

    // The first cycle a depth-first walk along dependencies finds, from the stages in list
    // order, as a path of indices that ends where it starts.
    fn find_cycle(&self) -> Option<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let mut mark = vec![Mark::New; self.len()];
        // The walk is iterative so that long chains cannot overflow the stack: each frame is a
        // stage and how many of its dependencies have been visited.
        let mut path: Vec<(usize, usize)> = Vec::new();
        for root in 0..self.len() {
            if mark[root] != Mark::New {
                continue;
            }
            mark[root] = Mark::OnPath;
            path.push((root, 0));
            while let Some(top) = path.last_mut() {
                let (node, next) = *top;
                match self.deps[node].get(next) {
                    None => {
                        mark[node] = Mark::Done;
                        path.pop();
                    }
                    Some(&dep) => {
                        top.1 += 1;
                        match mark[dep] {
                            Mark::Done => {}
                            Mark::New => {
                                mark[dep] = Mark::OnPath;
                                path.push((dep, 0));
                            }
                            Mark::OnPath => {
                                let start = path.iter().position(|&(n, _)| n == dep)?;
                                let mut cycle: Vec<usize> =
                                    path[start..].iter().map(|&(n, _)| n).collect();
                                cycle.push(dep);
                                return Some(cycle);
                            }
                        }
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_transitive() {
        let stages: Vec<Stage> = serde_json::from_value(serde_json::json!([
            {"name": "a", "delay": {"duration": "1s"}},
            {"name": "b", "delay": {"duration": "1s"}},
            {"name": "c", "dependsOn": ["a"], "delay": {"duration": "1s"}},
            {"name": "d", "dependsOn": ["c"], "delay": {"duration": "1s"}}
        ]))
        .unwrap();
        let p = plan(&stages).unwrap();
        assert_eq!(p.ancestors(3), [0, 2]);
        assert_eq!(p.ancestors(1), [0]);
        assert!(p.ancestors(0).is_empty());
    }

    fn stage(name: &str, deps: Option<&[&str]>) -> Stage {
        Stage {
            name: name.into(),
            depends_on: deps.map(|d| d.iter().map(|s| s.to_string()).collect()),
            ..Stage::default()
        }
    }

    fn deps_of(p: &Plan) -> Vec<Vec<usize>> {
        (0..p.len()).map(|i| p.deps(i).to_vec()).collect()
    }

    #[test]
    fn without_depends_on_stages_follow_the_list() {
        let p = plan(&[stage("a", None), stage("b", None), stage("c", None)]).unwrap();
        assert_eq!(deps_of(&p), [vec![], vec![0], vec![1]]);
        assert_eq!((p.len(), p.is_empty()), (3, false));
    }

    #[test]
    fn depends_on_replaces_the_implicit_dependency() {
        let p = plan(&[
            stage("a", None),
            stage("b", Some(&[])),
            stage("c", Some(&["b", "a", "b"])),
            stage("d", None),
        ])
        .unwrap();
        assert_eq!(deps_of(&p), [vec![], vec![], vec![0, 1], vec![2]]);
    }

    #[test]
    fn a_later_stage_may_be_depended_on() {
        let p = plan(&[stage("a", Some(&["b"])), stage("b", Some(&[]))]).unwrap();
        assert_eq!(deps_of(&p), [vec![1], vec![]]);
        assert_eq!(p.ready(&[false, false], &[false, false]), [1]);
    }

    #[test]
    fn empty_workflow() {
        let p = plan(&[]).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.ready(&[], &[]), Vec::<usize>::new());
    }

    #[test]
    fn ready_lists_unstarted_stages_whose_deps_succeeded() {
        // a; b and c after a (fan out); d after b and c (fan in).
        let p = plan(&[
            stage("a", None),
            stage("b", Some(&["a"])),
            stage("c", Some(&["a"])),
            stage("d", Some(&["b", "c"])),
        ])
        .unwrap();
        let none = [false; 4];
        assert_eq!(p.ready(&none, &none), [0]);
        assert_eq!(
            p.ready(&none, &[true, false, false, false]),
            Vec::<usize>::new()
        );
        let a_done = [true, false, false, false];
        assert_eq!(p.ready(&a_done, &a_done), [1, 2]);
        assert_eq!(p.ready(&a_done, &[true, true, false, false]), [2]);
        assert_eq!(
            p.ready(&[true, true, false, false], &[true, true, true, false]),
            Vec::<usize>::new()
        );
        assert_eq!(p.ready(&[true, true, true, false], &[true; 3]), [3]);
        // Short slices count as all false.
        assert_eq!(p.ready(&[], &[]), [0]);
    }

    #[test]
    fn unknown_dependency() {
        let e = plan(&[stage("a", None), stage("b", Some(&["a", "nope"]))]).unwrap_err();
        assert_eq!(
            e,
            DagError::UnknownStage {
                stage: "b".into(),
                depends_on: "nope".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "stage \"b\" depends on \"nope\", which is not a stage of this workflow"
        );
    }

    #[test]
    fn duplicate_name() {
        let e = plan(&[stage("a", None), stage("b", None), stage("a", None)]).unwrap_err();
        assert_eq!(e, DagError::DuplicateName("a".into()));
        assert_eq!(e.to_string(), "more than one stage is named \"a\"");
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let e = plan(&[stage("a", Some(&["a"]))]).unwrap_err();
        assert_eq!(e.to_string(), "dependency cycle: a -> a");
    }

    #[test]
    fn explicit_cycle_is_reported_as_a_path() {
        let e = plan(&[
            stage("x", None),
            stage("a", Some(&["c"])),
            stage("b", Some(&["a"])),
            stage("c", Some(&["b"])),
        ])
        .unwrap_err();
        assert_eq!(
            e,
            DagError::Cycle {
                stages: vec!["a".into(), "c".into(), "b".into(), "a".into()]
            }
        );
        assert_eq!(e.to_string(), "dependency cycle: a -> c -> b -> a");
    }

    #[test]
    fn cycle_through_an_implicit_dependency() {
        // b follows a in the list, and a waits for b.
        let e = plan(&[stage("a", Some(&["b"])), stage("b", None)]).unwrap_err();
        assert_eq!(e.to_string(), "dependency cycle: a -> b -> a");
    }

    #[test]
    fn long_chains_do_not_overflow_the_stack() {
        let names: Vec<String> = (0..100_000).map(|i| format!("s{i}")).collect();
        let mut stages: Vec<Stage> = names.iter().map(|n| stage(n, None)).collect();
        assert_eq!(plan(&stages).unwrap().len(), 100_000);
        stages[0].depends_on = Some(vec!["s99999".into()]);
        match plan(&stages).unwrap_err() {
            DagError::Cycle { stages } => assert_eq!(stages.len(), 100_001),
            e => panic!("{e}"),
        }
    }
}
